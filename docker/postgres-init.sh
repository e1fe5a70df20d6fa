#!/bin/bash
# Runs once, when the Postgres volume is created (docker-entrypoint-initdb.d), as the owner
# `prismrec` (POSTGRES_USER). One server, three databases, each with its own login:
#   prismrec  schemas app + reco; reco_writer / reco_reader are set up by the `prismrec-init`
#             service (`prismrec db grant`, tasks/publish/roles.py)
#   airflow   Airflow's metadata, owned by the role `airflow`
#   mlflow    MLflow's runs and registry, owned by the role `mlflow`
# Passwords arrive in the environment (docker/.env) and reach SQL as psql variables (:'name'
# quotes them as literals); none is written here.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v airflow_password="$AIRFLOW_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
create role airflow login password :'airflow_password';
create role mlflow login password :'mlflow_password';
create database airflow owner airflow;
create database mlflow owner mlflow;
SQL
