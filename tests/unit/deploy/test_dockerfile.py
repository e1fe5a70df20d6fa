"""docker/Dockerfile: two stages, a runtime without the developers' tools, buildable from a wheelhouse."""

from __future__ import annotations

import re

from tests.unit.deploy.compose import DOCKER, ROOT


def stages() -> dict[str, list[str]]:
    """{stage name: its instructions (continuation lines joined)}, in order."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    found: dict[str, list[str]] = {}
    current = None
    for line in (raw.strip() for raw in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if match := re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE):
            current = match.group(1)
            found[current] = []
        elif current is not None:
            found[current].append(line)
    return found


def dev_only_packages() -> set[str]:
    """Packages of requirements.lock that only the dev extra (pytest, ruff) brings in, read from
    the lock's `# via` notes: a package is dev-only when everything that pulls it in is."""
    via: dict[str, set[str]] = {}
    name = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9_.-]+)==", line):
            name = match.group(1).lower()
            via[name] = set()
        elif name and (match := re.match(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9_.-]+)", line)) and match.group(1) != "via":
            via[name].add(match.group(1).lower())
    dev = {"pytest", "ruff"}
    changed = True
    while changed:
        changed = False
        for package, parents in via.items():
            if package not in dev and parents and parents <= dev:
                dev.add(package)
                changed = True
    return dev


def test_the_runtime_stage_is_last_and_carries_no_build_or_developer_tools():
    found = stages()
    assert list(found) == ["build", "runtime"]
    runtime = " ".join(found["runtime"])
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    for tool in ("pytest", "ruff", "uv ", "pip install", "requirements.lock", "build-essential", "gcc"):
        assert tool not in runtime, tool
    assert re.search(r"\bUSER\s+prismrec\b", runtime)  # not root


def test_the_build_stage_leaves_out_exactly_the_dev_only_packages_of_the_lock():
    build = " ".join(stages()["build"])
    (declared,) = re.findall(r'ARG DEV_ONLY="([^"]+)"', (DOCKER / "Dockerfile").read_text())
    assert set(declared.split()) == dev_only_packages() == {"pytest", "ruff", "iniconfig"}
    assert 'grep -v -E "^($pattern)==" requirements.lock' in build


def test_the_image_builds_from_a_local_wheelhouse():
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG WHEELHOUSE=docker/wheels" in text and "COPY ${WHEELHOUSE}/ /wheels/" in text
    assert '--no-index --find-links /wheels' in text  # NO_INDEX=1: the wheelhouse alone
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!docker/wheels/**" in ignore and "!docker/bin/**" in ignore
    assert (DOCKER / "wheels" / "README.md").exists()  # the default folder is there in a fresh clone


def test_dependencies_are_installed_as_bytecode():
    """The image's runtime user cannot write into /opt/venv, and a shell with PYTHONDONTWRITEBYTECODE
    writes no cache either: without .pyc files from the install, every process (a CLI call, a training
    worker, an Airflow service) compiles torch, transformers, Airflow and MLflow from source again."""
    build = " ".join(stages()["build"])
    assert re.search(r"uv pip install [^;]*--compile-bytecode[^;]*-r /tmp/runtime\.lock", build)
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"uv pip install [^\n]*--compile-bytecode[^\n]*-r requirements\.lock", make)
    # The project's own modules too: in the image, and before `make test` and `make demo` start processes.
    own = ("tasks", "expectations", "dags", "mlflow")
    assert re.search(r"compileall -q " + " ".join(own), build)
    assert re.search(r"COMPILE_OWN = \$\(BIN\)/python -m compileall -q -j 0 " + " ".join(own), make)
    for target in ("demo", "test"):
        recipe = re.search(rf"^{target}:[^\n]*\n((?:\t[^\n]*\n)+)", make, re.MULTILINE).group(1)
        assert recipe.lstrip().startswith("@$(COMPILE_OWN)"), (target, recipe)
