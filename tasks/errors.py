"""The project's own exception types: every error a user can cause is one of these.

Each message says what was wrong and what to do about it; the CLI prints it on stderr
and exits non-zero without a traceback. Under Airflow the same error fails its task at once,
without retries (tasks.airflow_tasks), unless it is `transient`: a fault that may pass by
itself, such as a database that did not answer, keeps the task's retries.
"""


class PrismRecError(Exception):
    """Base class for errors a user can act on."""

    # False: running the task again gives the same answer until someone fixes the cause.
    transient = False


class ConfigError(PrismRecError):
    """A setting (environment, DAG Param, flag) is missing or out of range."""


class ServiceUnavailableError(ConfigError):
    """A server PrismRec needs (Postgres) did not answer: a wrong address, or one down for a while."""

    transient = True


class SourceDataError(PrismRecError):
    """The source data (MovieLens files, the `app` schema) is missing or not what was expected."""


class DataQualityError(PrismRecError):
    """The data-quality gate failed; nothing downstream ran or was written."""

    def __init__(self, message: str, failures: list | None = None):
        super().__init__(message)
        self.failures = failures or []


class TrainingError(PrismRecError):
    """Fine-tuning failed (torchrun exited non-zero, or no checkpoint was produced)."""


class NoChampionError(PrismRecError):
    """The registry has no `champion` alias yet, so there is nothing to publish."""


class RegistryError(PrismRecError):
    """A registry operation was refused (unknown version, nothing to roll back to, ...)."""
