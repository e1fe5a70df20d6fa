-- Runs once, when the Postgres volume is created (docker-entrypoint-initdb.d).
-- One server, three databases: `prismrec` (schemas app + reco), `airflow` and `mlflow` metadata.
create database airflow owner prismrec;
create database mlflow owner prismrec;

\connect prismrec
create schema if not exists app authorization prismrec;
create schema if not exists reco authorization prismrec;

-- BI tools read `reco`, the pipeline writes it (docs/architecture.md, roles). Group roles without
-- login: grant them to real users, e.g. `create role metabase login password '...' in role reco_reader`.
create role reco_reader nologin;
create role reco_writer nologin;
grant usage on schema reco to reco_reader, reco_writer;
grant create on schema reco to reco_writer;
-- Tables the pipeline (user prismrec) creates later are readable/writable without new grants.
alter default privileges for role prismrec in schema reco grant select on tables to reco_reader;
alter default privileges for role prismrec in schema reco
    grant select, insert, update, delete, truncate on tables to reco_writer;
