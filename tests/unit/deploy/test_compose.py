"""docker/: the Compose stack is valid Compose and deployable as it stands.

No Docker engine runs here, so these checks read the files: the compose file against the
compose-spec JSON schema (vendored beside this test: compose-spec/compose-spec, schema/compose-spec.json,
commit 170098ba, Apache-2.0), after interpolating it the way Compose does with a docker/.env made
by docker/generate-env.py; then the settings a deployment depends on (bound ports, no literal
secret, roles, health checks, one image, the Celery profile, the pipeline's database role).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.unit.deploy.compose import (
    AIRFLOW_SERVICES,
    DOCKER,
    ROOT,
    environment,
    generator,
    interpolate,
    load_compose,
    raw_compose,
    required_variables,
)

SCHEMA = json.loads((Path(__file__).parent / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> dict[str, str]:
    """A docker/.env as the generator writes it, read back."""
    path = tmp_path_factory.mktemp("env") / ".env"
    generator().main(["--out", str(path)])
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def stack(env_file):
    return load_compose(env_file)


def test_the_interpolated_compose_file_follows_the_compose_spec_schema(stack, env_file):
    jsonschema.Draft7Validator(SCHEMA).validate(stack)
    # Also with the Celery profile's settings, and with every optional setting changed.
    celery = {**env_file, "AIRFLOW_EXECUTOR": "CeleryExecutor", "COMPOSE_PROFILES": "celery",
              "MLFLOW_PORT": "5001", "PRISMREC_BIND_ADDRESS": "10.0.0.5", "MLFLOW_PUBLIC_HOSTNAMES": "mlflow.example.com"}
    jsonschema.Draft7Validator(SCHEMA).validate(load_compose(celery))


def test_without_docker_env_compose_refuses_to_start_naming_the_generator():
    with pytest.raises(KeyError, match="run python docker/generate-env.py"):
        load_compose({})


def test_every_secret_is_a_required_variable_that_the_generator_writes(env_file):
    secrets = set(generator().SECRETS)
    assert required_variables() == secrets
    assert secrets <= set(env_file) and len({env_file[name] for name in secrets}) == len(secrets)  # all distinct
    assert all(len(env_file[name]) >= 32 for name in secrets)


def test_no_literal_secret_in_the_compose_file():
    """Every value under a secret-sounding name, and every password inside a URL, is a ${VAR:?...}."""
    secret_name = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_AUTH$")
    for name, service in raw_compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if secret_name.search(key) and "PASSWORDS_FILE" not in key and "USERNAME" not in key:
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (name, key, value)
            for password in re.findall(r"://[^:/@\s]*:([^@\s]*)@", str(value)):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", password), (name, key)
        for arg in service.get("command") or []:
            assert not re.search(r"://[^:/@\s]*:[^@\s$]+@", str(arg)), (name, arg)  # no password in argv
    text = (DOCKER / "docker-compose.yml").read_text()
    assert "prismrec-local-only" not in text and ":-prismrec}" not in text


def test_published_ports_bind_to_localhost_unless_overridden(stack, env_file):
    for name, service in raw_compose()["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("${PRISMREC_BIND_ADDRESS:-127.0.0.1}:"), (name, port)
    published = [port for service in stack["services"].values() for port in service.get("ports", [])]
    assert published and all(port.startswith("127.0.0.1:") for port in published)
    assert not any("0.0.0.0" in port for port in published)
    moved = load_compose({**env_file, "PRISMREC_BIND_ADDRESS": "10.0.0.5", "AIRFLOW_PORT": "9090"})
    assert "10.0.0.5:9090:8080" in moved["services"]["airflow-apiserver"]["ports"]


def test_every_service_has_a_health_check_and_the_airflow_jobs_check_theirs(stack):
    for name, service in stack["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        one_shot = service.get("restart") == "no" or service.get("profiles") == ["cli"]
        assert check.get("disable") is (True if one_shot else None), name
        if not one_shot:
            assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name
    for name, job in {"airflow-scheduler": "SchedulerJob", "airflow-dag-processor": "DagProcessorJob",
                      "airflow-triggerer": "TriggererJob"}.items():
        assert stack["services"][name]["healthcheck"]["test"][1:] == [
            "airflow", "jobs", "check", "--job-type", job, "--local"]
    # The job types are the ones this Airflow's CLI accepts.
    from airflow.cli.cli_config import ARG_JOB_TYPE_FILTER

    assert {"SchedulerJob", "DagProcessorJob", "TriggererJob"} <= set(ARG_JOB_TYPE_FILTER.kwargs["choices"])


def test_one_image_built_once_and_reused_by_name(stack):
    builders = [name for name, service in stack["services"].items() if "build" in service]
    assert builders == ["prismrec-init"]
    assert stack["services"]["prismrec-init"]["build"]["target"] == "runtime"
    ours = [name for name, service in stack["services"].items() if service["image"] == "prismrec:local"]
    assert set(ours) == set(stack["services"]) - {"postgres", "redis"}
    assert {"airflow-triggerer", "airflow-dag-processor", "mlflow", "prismrec"} <= set(ours)


def test_the_pipeline_connects_as_reco_writer_and_only_the_init_holds_the_owner_password(stack):
    import sqlalchemy as sa

    for name in [*AIRFLOW_SERVICES, "prismrec"]:
        url = sa.make_url(environment(stack, name)["PRISMREC_DATABASE_URL"])
        assert (url.username, url.host, url.database) == ("reco_writer", "postgres", "prismrec"), name
    owner = [name for name in stack["services"] if "POSTGRES_PASSWORD" in json.dumps(raw_compose()["services"][name])]
    assert sorted(owner) == ["postgres", "prismrec-init"]
    init = environment(stack, "prismrec-init")
    assert sa.make_url(init["PRISMREC_DATABASE_URL"]).username == "prismrec"
    assert stack["services"]["prismrec-init"]["command"] == ["db", "grant"]
    assert {"PRISMREC_WRITER_PASSWORD", "PRISMREC_READER_PASSWORD"} <= set(init)
    for name in AIRFLOW_SERVICES:  # Airflow's own metadata: its own role, not the owner
        assert sa.make_url(environment(stack, name)["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).username == "airflow"


def test_every_airflow_container_shares_the_jwt_secret_api_key_and_fernet_key(stack, env_file):
    shared = {"AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET", "AIRFLOW__API__SECRET_KEY": "AIRFLOW_API_SECRET_KEY",
              "AIRFLOW__CORE__FERNET_KEY": "AIRFLOW_FERNET_KEY"}
    for name in AIRFLOW_SERVICES:
        env = environment(stack, name)
        assert {key: env.get(key) for key in shared} == {key: env_file[var] for key, var in shared.items()}, name
    from cryptography.fernet import Fernet

    token = Fernet(env_file["AIRFLOW_FERNET_KEY"]).encrypt(b"connection")  # a valid key
    assert Fernet(env_file["AIRFLOW_FERNET_KEY"]).decrypt(token) == b"connection"


def test_users_have_roles_and_the_viewer_cannot_trigger_a_run(stack):
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    env = environment(stack, "airflow-apiserver")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    users = dict(entry.split(":") for entry in env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].split(","))
    assert users == {"admin": "admin", "operator": "op", "viewer": "viewer"}
    manager = SimpleAuthManager()
    allowed = {role: manager.is_authorized_dag(method="POST", user=SimpleAuthManagerUser(username=name, role=role))
               for name, role in users.items()}
    # A forced promotion is a triggered run with force_promote: the viewer cannot start one.
    assert allowed == {"admin": True, "op": True, "viewer": False}
    assert manager.is_authorized_dag(method="GET", user=SimpleAuthManagerUser(username="viewer", role="viewer"))
    # The CLI posts the champion asset as the operator (asset events need role op).
    cli = environment(stack, "prismrec")
    assert cli["PRISMREC_AIRFLOW_USERNAME"] == "operator" and cli["PRISMREC_AIRFLOW_PASSWORD"] == env["AIRFLOW_OPERATOR_PASSWORD"]
    assert manager.is_authorized_asset(method="POST", user=SimpleAuthManagerUser(username="operator", role="op"))


def test_the_api_server_writes_each_users_password_from_the_environment(tmp_path):
    script = DOCKER / "bin" / "airflow-auth-passwords"
    target = tmp_path / "passwords.json"
    env = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(target),
           "AIRFLOW_ADMIN_PASSWORD": "a-secret", "AIRFLOW_VIEWER_PASSWORD": "v-secret", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(target.read_text()) == {"admin": "a-secret", "viewer": "v-secret"}
    assert target.stat().st_mode & 0o777 == 0o600 and "secret" not in done.stderr
    del env["AIRFLOW_VIEWER_PASSWORD"]
    failed = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=False)
    assert failed.returncode != 0 and "AIRFLOW_VIEWER_PASSWORD" in failed.stderr and "generate-env.py" in failed.stderr


def test_mlflow_accepts_its_own_names_the_port_override_and_configured_hostnames(env_file):
    from mlflow.server.security_utils import is_allowed_host_header

    def allowed_hosts(settings: dict[str, str]) -> list[str]:
        command = load_compose({**env_file, **settings})["services"]["mlflow"]["command"]
        (flag,) = [arg for arg in command if arg.startswith("--allowed-hosts=")]
        return flag.split("=", 1)[1].split(",")

    default = allowed_hosts({})
    assert all(is_allowed_host_header(default, host) for host in ("mlflow:5000", "localhost:5000", "127.0.0.1:5000"))
    moved = allowed_hosts({"MLFLOW_PORT": "5001", "MLFLOW_PUBLIC_HOSTNAMES": "mlflow.example.com,ml.example.com:8443"})
    assert all(is_allowed_host_header(moved, host) for host in
               ("localhost:5001", "127.0.0.1:5001", "mlflow:5000", "mlflow.example.com", "ml.example.com:8443"))
    assert not any(is_allowed_host_header(moved, host) for host in ("evil.example", "localhost:6666", ""))
    assert "*" not in moved


def test_celery_profile_runs_redis_and_workers_that_scale_by_count(stack):
    services = stack["services"]
    assert services["redis"]["profiles"] == ["celery"] == services["worker"]["profiles"]
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N needs both absent
    assert "airflow celery worker" in worker["command"][-1]
    assert environment(stack, "worker")["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:")
    raw = raw_compose()["services"]
    assert raw["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
    assert services["airflow-scheduler"]["depends_on"]["redis"]["required"] is False
    # Without the profile nothing else depends on Redis being there.
    for name, service in services.items():
        if name not in ("worker", "airflow-scheduler"):
            assert "redis" not in (service.get("depends_on") or {}), name


def test_the_generator_writes_a_private_env_file_and_keeps_an_existing_one(tmp_path):
    path = tmp_path / ".env"
    generator().main(["--out", str(path), "--celery"])
    assert path.stat().st_mode & 0o777 == 0o600
    content = path.read_text()
    assert "AIRFLOW_EXECUTOR=CeleryExecutor" in content and "COMPOSE_PROFILES=celery" in content
    with pytest.raises(SystemExit, match="exists"):
        generator().main(["--out", str(path)])
    generator().main(["--out", str(path), "--force"])
    assert path.read_text() != content
    # docker/.env itself is never committed.
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT, check=False)
    assert ignored.returncode == 0


def test_interpolation_follows_compose_rules():
    assert interpolate("${A:-x}/${B}/$${C}", {"B": "b"}) == "x/b/${C}"
    assert interpolate("${A:-x}", {"A": ""}) == "x"
    with pytest.raises(KeyError, match="need it"):
        interpolate("${A:?need it}", {})
