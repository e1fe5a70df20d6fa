#!/usr/bin/env python3
"""Write docker/.env: every secret of the Compose stack, freshly generated, plus its settings.

    python docker/generate-env.py            # LocalExecutor stack
    python docker/generate-env.py --celery   # CeleryExecutor on Redis (profile `celery`)

docker/.env is git-ignored and written readable by its owner only. An existing file is kept
(rotating a database password by hand needs ALTER ROLE too, see docker/README.md) unless --force.
Standard library only, so it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
from pathlib import Path

# Each secret the stack reads, and what it protects. URL-safe values: the passwords go into
# connection URLs unencoded.
SECRETS = {
    "POSTGRES_PASSWORD": "the Postgres owner `prismrec` (owns app and reco; used by the one-shot init only)",
    "PRISMREC_WRITER_PASSWORD": "reco_writer, the role the pipeline connects as",
    "PRISMREC_READER_PASSWORD": "reco_reader, the BI tools' role",
    "AIRFLOW_DB_PASSWORD": "the `airflow` role, owner of Airflow's metadata database",
    "MLFLOW_DB_PASSWORD": "the `mlflow` role, owner of MLflow's tracking and registry database",
    "REDIS_PASSWORD": "the Celery broker (profile celery)",
    "AIRFLOW_FERNET_KEY": "encrypts Airflow connections and variables",
    "AIRFLOW_JWT_SECRET": "signs the tokens Airflow components and task runners exchange",
    "AIRFLOW_API_SECRET_KEY": "the api-server's secret key, the same in every Airflow container",
    "AIRFLOW_ADMIN_PASSWORD": "Airflow user `admin` (role admin)",
    "AIRFLOW_OPERATOR_PASSWORD": "Airflow user `operator` (role op: triggers runs, posts the champion asset)",
    "AIRFLOW_VIEWER_PASSWORD": "Airflow user `viewer` (role viewer: reads, cannot trigger or force-promote)",
}

# Settings with their defaults; the stack's own defaults match, so these lines only document them.
SETTINGS = {
    "PRISMREC_BIND_ADDRESS": ("127.0.0.1", "host address the published ports bind to (0.0.0.0 exposes them)"),
    "POSTGRES_PORT": ("5432", "host port of Postgres (psql, BI tools)"),
    "MLFLOW_PORT": ("5000", "host port of the MLflow UI"),
    "AIRFLOW_PORT": ("8080", "host port of the Airflow UI and REST API"),
    "MLFLOW_PUBLIC_HOSTNAMES": ("", "extra Host names MLflow answers to, comma-separated (e.g. mlflow.example.com)"),
}


def fernet_key() -> str:
    """A Fernet key: 32 random bytes, URL-safe base64 (what cryptography's Fernet.generate_key makes)."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def generate(celery: bool) -> dict[str, str]:
    """Every variable of docker/.env: fresh secrets and the settings' defaults."""
    values = {name: fernet_key() if name == "AIRFLOW_FERNET_KEY" else secrets.token_urlsafe(32)
              for name in SECRETS}
    values.update({name: default for name, (default, _) in SETTINGS.items()})
    values["AIRFLOW_EXECUTOR"] = "CeleryExecutor" if celery else "LocalExecutor"
    values["COMPOSE_PROFILES"] = "celery" if celery else ""
    return values


def render(values: dict[str, str]) -> str:
    lines = ["# PrismRec stack secrets and settings (docker/generate-env.py). Never commit this file.", ""]
    for name, what in SECRETS.items():
        lines += [f"# {what}", f"{name}={values[name]}"]
    lines += ["", "# Settings"]
    for name, (_, what) in SETTINGS.items():
        lines += [f"# {what}", f"{name}={values[name]}"]
    lines += ["# LocalExecutor, or CeleryExecutor with COMPOSE_PROFILES=celery (Redis and the workers)",
              f"AIRFLOW_EXECUTOR={values['AIRFLOW_EXECUTOR']}", f"COMPOSE_PROFILES={values['COMPOSE_PROFILES']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / ".env")
    parser.add_argument("--celery", action="store_true", help="run tasks on Celery workers (profile celery)")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        raise SystemExit(f"{args.out} exists: it holds the passwords the stack's volumes were created with. "
                         "Keep it, or pass --force (then reset the stack: docker compose ... down -v).")
    descriptor = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(render(generate(args.celery)))
    os.chmod(args.out, 0o600)
    print(f"wrote {args.out} ({len(SECRETS)} secrets, executor "
          f"{'CeleryExecutor' if args.celery else 'LocalExecutor'})")


if __name__ == "__main__":
    main()
