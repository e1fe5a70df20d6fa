"""Reading docker/docker-compose.yml as Compose does: YAML with anchors, then variable interpolation."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "docker"
# Every service that runs Airflow, and so needs its shared secrets and metadata database.
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "worker")

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$` (a literal `$`).
    A missing required variable raises KeyError with Compose's error text."""
    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg")
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if value is not None else arg
        if op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise KeyError(f"required variable {name} is missing a value: {arg}")
        return value or ""
    return _VARIABLE.sub(replace, text)


def _walk(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {key: _walk(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_walk(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


@cache
def _text() -> str:
    return (DOCKER / "docker-compose.yml").read_text()


def raw_compose() -> dict:
    """The file with its anchors merged, variables as written."""
    return yaml.safe_load(_text())


def load_compose(env: dict[str, str]) -> dict:
    """The file as Compose sees it with `env` (docker/.env): anchors merged, variables interpolated."""
    return _walk(raw_compose(), env)


def required_variables() -> set[str]:
    """The variables the file's values require (`${NAME:?...}`; comments aside)."""
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)
        elif isinstance(node, str):
            found.update(m.group("name") for m in _VARIABLE.finditer(node) if m.group("op") == ":?")
    visit(raw_compose())
    return found


def environment(stack: dict, service: str) -> dict[str, str]:
    return dict(stack["services"][service].get("environment") or {})


def generator() -> ModuleType:
    """docker/generate-env.py, imported by path (docker/ is not a package)."""
    spec = importlib.util.spec_from_file_location("generate_env", DOCKER / "generate-env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
