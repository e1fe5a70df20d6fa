"""The one module that owns Postgres access: engines, the embedded server, schemas, COPY.

`PRISMREC_DATABASE_URL` points at a real server; unset, an embedded PostgreSQL 16
(PyPI `pgserver`) is started in the project-local folder and used over a Unix socket.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from tasks.config import PipelineConfig
from tasks.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)

_servers: dict[Path, object] = {}  # keep embedded servers referenced while this process runs
_engines: dict[str, Engine] = {}

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def quote_ident(name: str) -> str:
    """Validate a schema/table/column name from configuration before it goes into SQL."""
    if not _IDENTIFIER.match(name):
        raise ConfigError(
            f"{name!r} is not a valid SQL identifier here; use lower-case letters, digits and _"
        )
    return f'"{name}"'


def embedded_url(folder: Path) -> str:
    """Start (or attach to) the embedded Postgres in `folder` and return its SQLAlchemy URL."""
    import warnings

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI)
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pgserver  # heavy-ish, only when no server is configured

    folder = folder.resolve()
    if folder not in _servers:
        folder.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded Postgres in %s", folder)
        _servers[folder] = pgserver.get_server(folder, cleanup_mode="stop")
    uri = _servers[folder].get_uri()  # postgresql://postgres:@/postgres?host=/socket/dir
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def database_url(config: PipelineConfig) -> str:
    """The URL the platform uses: the configured server, else the embedded one."""
    if config.database.url:
        url = config.database.url
        if url.startswith("postgresql://"):
            url = url.replace("postgresql://", "postgresql+psycopg2://", 1)
        if not url.startswith("postgresql"):
            raise ConfigError(
                "PRISMREC_DATABASE_URL must be a PostgreSQL URL "
                "(postgresql://user:password@host:5432/dbname)"
            )
        check_url(url)
        return url
    return embedded_url(config.paths.embedded_pg)


def check_url(url: str) -> None:
    """Refuse a database URL that does not parse as written, without echoing any of it.

    An unencoded `@` (or `:` after one) in a password splits it: the parser takes its tail for
    the host or port, and the driver's error would print that part of the password.
    """
    hint = ("PRISMREC_DATABASE_URL (database.url) does not parse as postgresql://user:password@host:port/dbname. "
            "If the password contains @, :, / or %, percent-encode it (@ is %40, : is %3A, / is %2F, % is %25; "
            "python -c 'import urllib.parse,getpass; print(urllib.parse.quote(getpass.getpass(), safe=\"\"))' "
            "prints it encoded); the URL is not shown here because it holds a password")
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - the port is parsed lazily in some versions
    except (sa.exc.ArgumentError, ValueError):
        raise ConfigError(hint) from None
    if "@" in (parsed.host or "") or "@" in (parsed.database or "") or "@" in str(parsed.query):
        raise ConfigError(hint)


def safe_url(url: str | URL) -> str:
    """The URL with its password hidden, for logs and error messages."""
    return make_url(url).render_as_string(hide_password=True)


def get_engine(config: PipelineConfig) -> Engine:
    """A pooled engine per URL; connection errors say where we tried, never the password."""
    url = database_url(config)
    if url not in _engines:
        engine = sa.create_engine(url, pool_pre_ping=True, future=True)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))
        except sa.exc.OperationalError as exc:
            raise ServiceUnavailableError(
                f"cannot connect to Postgres at {safe_url(url)}: {str(exc.orig).strip().splitlines()[0]}. "
                "Check PRISMREC_DATABASE_URL (or unset it to use the embedded server)."
            ) from None
        _engines[url] = engine
    return _engines[url]


def ensure_schema(conn: sa.Connection, schema: str) -> None:
    """Create `schema` if it does not exist. Only then: CREATE SCHEMA IF NOT EXISTS still needs CREATE on the
    database, which the schema's owner and the pipeline's role do not have."""
    if conn.execute(sa.text("select to_regnamespace(:s)"), {"s": quote_ident(schema)}).scalar() is None:
        conn.execute(sa.text(f"create schema if not exists {quote_ident(schema)}"))


def table_exists(engine: Engine, schema: str, table: str) -> bool:
    return sa.inspect(engine).has_table(table, schema=schema)


def copy_rows(conn: sa.Connection, qualified_table: str, columns: Iterable[str],
              csv_text: str | io.StringIO | io.BytesIO, *, freeze: bool = False) -> None:
    """Bulk-load CSV text into a table with COPY (psycopg2 `copy_expert`) on `conn`'s transaction."""
    cols = ", ".join(quote_ident(c) for c in columns)
    buffer = csv_text if isinstance(csv_text, (io.StringIO, io.BytesIO)) else io.StringIO(csv_text)
    buffer.seek(0)
    raw = conn.connection.driver_connection
    with raw.cursor() as cursor:
        options = "FORMAT csv, FREEZE" if freeze else "FORMAT csv"
        # 1 MiB reads: the driver releases the GIL while it sends each, so scoring can go on meanwhile.
        cursor.copy_expert(f"COPY {qualified_table} ({cols}) FROM STDIN WITH ({options})", buffer, size=1 << 20)


def copy_query_to_file(conn: sa.Connection, query: str, path: Path, *, header: bool = False) -> None:
    """Run `query` (parameters already bound) through COPY ... TO STDOUT into a CSV file at `path`."""
    raw = conn.connection.driver_connection
    options = "FORMAT csv, HEADER" if header else "FORMAT csv"
    with raw.cursor() as cursor, path.open("wb") as out:
        cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH ({options})", out, size=1 << 20)


def copy_out_int64(conn: sa.Connection, query: str, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The integer columns of `query` (never null) as int64 arrays, by name. The rows leave Postgres
    through COPY ... TO STDOUT in its binary format into a temporary file, read back as fixed-width
    records through a memory map: memory holds the arrays, not a Python object per value as a
    driver's fetch does (at 100M rows of two columns, 1.6 GB against tens), and nothing is parsed
    from text (at 100M rows, ~2 s against ~16 s for CSV)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prismrec-copy-") as folder:
        path = Path(folder) / "rows.bin"
        raw = conn.connection.driver_connection
        with raw.cursor() as cursor, path.open("wb") as out:
            cursor.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT binary)", out, size=1 << 20)
        return _binary_int_columns(path, columns)


PGCOPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _binary_int_columns(path: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Integer columns (smallint, integer or bigint; no nulls) of a COPY binary file as int64 arrays."""
    with path.open("rb") as raw:
        head = raw.read(1 << 16)  # the header and the first row
    if not head.startswith(PGCOPY_SIGNATURE):
        raise ValueError(f"{path} is not PostgreSQL COPY binary output")
    start = len(PGCOPY_SIGNATURE) + 8 + int.from_bytes(head[15:19], "big")  # flags, extension length, extension
    size = path.stat().st_size - start - 2  # the int16 -1 trailer
    if size == 0:
        return {c: np.zeros(0, dtype=np.int64) for c in columns}
    first = np.frombuffer(head, dtype=">i2", count=1, offset=start)[0]
    widths, at = [], start + 2
    for _ in range(first):  # the first row's field lengths fix the record layout
        widths.append(int(np.frombuffer(head, dtype=">i4", count=1, offset=at)[0]))
        at += 4 + max(widths[-1], 0)
    if first != len(columns) or any(w not in (2, 4, 8) for w in widths):
        raise ValueError(f"COPY returned fields of {widths} bytes for columns {columns}: expected integers, no nulls")
    layout = np.dtype([("fields", ">i2")] + [item for i, w in enumerate(widths)
                                              for item in ((f"w{i}", ">i4"), (f"v{i}", f">i{w}"))])
    if size % layout.itemsize:
        raise ValueError(f"COPY rows of {columns} are not all {widths} bytes wide (a null, or a mixed type)")
    rows = np.memmap(path, dtype=layout, mode="r", offset=start, shape=(size // layout.itemsize,))
    if (rows["fields"] != len(columns)).any() or any((rows[f"w{i}"] != w).any() for i, w in enumerate(widths)):
        raise ValueError(f"COPY rows of {columns} are not all {widths} bytes wide (a null, or a mixed type)")
    out = {c: rows[f"v{i}"].astype(np.int64) for i, c in enumerate(columns)}
    del rows
    return out


def copy_arrow(conn: sa.Connection, qualified_table: str, table, *, freeze: bool = False) -> int:
    """COPY a pyarrow Table (columns by name) on `conn`'s transaction; returns rows written.

    pyarrow's CSV writer is several times faster than pandas' for a million rows. `freeze`
    (only for a table created in this transaction) writes rows already frozen, so index-only
    scans work without waiting for VACUUM.
    """
    copy_rows(conn, qualified_table, table.column_names, io.BytesIO(arrow_csv(table)), freeze=freeze)
    return table.num_rows


def arrow_csv(table) -> bytes:
    """A pyarrow Table as COPY's CSV, without a header (pyarrow's writer: several times faster than pandas')."""
    import pyarrow.csv as pacsv

    buffer = io.BytesIO()
    pacsv.write_csv(table, buffer, pacsv.WriteOptions(include_header=False))
    return buffer.getvalue()
