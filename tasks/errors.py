"""The project's own exception types: every error a user can cause is one of these.

Each message says what was wrong and what to do about it; the CLI prints it on stderr
and exits non-zero without a traceback.
"""


class PrismRecError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(PrismRecError):
    """A setting (environment, DAG Param, flag) is missing or out of range."""


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
