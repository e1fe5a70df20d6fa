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


class PublishBlockedError(PrismRecError):
    """The swap of a publication kept finding readers' locks in its way; nothing was changed.

    Transient: the blocking query ends sooner or later, so Airflow keeps the task's retries.
    """

    transient = True


class RunInProgressError(PrismRecError):
    """Another run of the same DAG holds this PrismRec home; nothing was started."""


class SupersededError(PrismRecError):
    """A publish finished after a newer one became current; the newer set stays, this one is dropped."""


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


def first_cause(exc: BaseException) -> BaseException:
    """The error that started a cascade: the earliest database error in `exc`'s chain, else `exc`.

    A backend killed mid-transaction first raises "terminating connection due to administrator
    command"; the rollback that follows raises "connection already closed", which hides it.
    Other chains keep their outermost error: a library's internal KeyError is no cause.
    """
    chain, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    database = [e for e in chain if type(e).__module__.split(".")[0] in ("psycopg2", "psycopg")
                or type(e).__module__.startswith("sqlalchemy.exc")]
    return database[-1] if database else exc


def one_line(exc: BaseException, limit: int = 500) -> str:
    """`Type: first line of the message` (a driver's message, never the SQL statement or its parameters)."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy's wrapper: its own text appends the statement
    source = orig if isinstance(orig, BaseException) else exc
    lines = str(source).strip().splitlines()
    return f"{type(source).__name__}: {lines[0] if lines else type(source).__name__}"[:limit]
