"""Tell Airflow that the champion changed after a person moved it (`prismrec promote` / `rollback`).

The asset `prismrec://champion` (tasks.contracts) fires when a training run promotes AND when
a person does; `recsys_materialize` is scheduled on it. A training run emits it from its
`register` task; a promotion from the command line has no task to emit from, so it posts an
asset event to the Airflow REST API (Airflow 3: `POST /api/v2/assets/events` with the asset's
numeric id, looked up by uri with `GET /api/v2/assets`).

The API server comes from the environment:

- `PRISMREC_AIRFLOW_API_URL`: e.g. `http://airflow-apiserver:8080` (unset: no deployment; the CLI
  then publishes in-process instead, see tasks/cli.py).
- `PRISMREC_AIRFLOW_API_TOKEN`: a JWT sent as `Authorization: Bearer ...`, or
- `PRISMREC_AIRFLOW_USERNAME` / `PRISMREC_AIRFLOW_PASSWORD`: exchanged for a token at
  `POST /auth/token` (SimpleAuthManager's login endpoint).
- None of them: no Authorization header. Enough for SimpleAuthManager with
  `simple_auth_manager_all_admins=True`, whose middleware treats every request as an admin's
  (docker/docker-compose.yml has real users: its CLI logs in as `operator`).

The standard library's HTTP client is used on purpose: the CLI must not need Airflow's client.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.contracts import CHAMPION_URI
from tasks.errors import PrismRecError

log = logging.getLogger(__name__)

API_URL_ENV = "PRISMREC_AIRFLOW_API_URL"
TOKEN_ENV = "PRISMREC_AIRFLOW_API_TOKEN"
USERNAME_ENV = "PRISMREC_AIRFLOW_USERNAME"
PASSWORD_ENV = "PRISMREC_AIRFLOW_PASSWORD"


class AssetEventError(PrismRecError):
    """The Airflow API server could not be reached, refused us, or does not know the asset."""


@dataclass(frozen=True)
class AirflowApi:
    """Where the Airflow API server is and how to authenticate to it."""

    base_url: str
    token: str | None = None
    username: str | None = None
    password: str | None = None
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AirflowApi | None:
        """The API server configured in the environment, or None when PRISMREC_AIRFLOW_API_URL is unset."""
        env = os.environ if environ is None else environ
        url = (env.get(API_URL_ENV) or "").strip()
        if not url:
            return None
        return cls(base_url=url.rstrip("/"), token=env.get(TOKEN_ENV) or None,
                   username=env.get(USERNAME_ENV) or None, password=env.get(PASSWORD_ENV) or None)


def _request(api: AirflowApi, method: str, path: str, *, body: Any = None,
             headers: Mapping[str, str] | None = None, query: Mapping[str, Any] | None = None) -> Any:
    """One JSON request to the API server; raises AssetEventError with the server's own detail."""
    url = f"{api.base_url}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Accept": "application/json", **(headers or {})})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=api.timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        hint = " (set PRISMREC_AIRFLOW_API_TOKEN or PRISMREC_AIRFLOW_USERNAME/PASSWORD)" \
            if exc.code in (401, 403) else ""
        raise AssetEventError(f"{method} {url} answered HTTP {exc.code}{hint}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AssetEventError(f"cannot reach the Airflow API server at {api.base_url}: {reason}") from None
    try:
        return json.loads(payload) if payload else None
    except ValueError:
        raise AssetEventError(f"{method} {url} did not answer JSON: {payload[:200]!r}") from None


def auth_headers(api: AirflowApi) -> dict[str, str]:
    """`Authorization: Bearer` from the token, or from a login with username/password; else none."""
    token = api.token
    if not token and api.username:
        answer = _request(api, "POST", "/auth/token", body={"username": api.username, "password": api.password or ""})
        token = (answer or {}).get("access_token")
        if not token:
            raise AssetEventError(f"{api.base_url}/auth/token returned no access_token for user {api.username!r}")
    return {"Authorization": f"Bearer {token}"} if token else {}


def normalized_uri(uri: str) -> str:
    """An asset URI as Airflow stores it: trailing slashes dropped, an empty path written `/`.

    Airflow 3 normalises `prismrec://champion` to `prismrec://champion/` when it parses the DAG
    (airflow.sdk.definitions.asset._sanitize_uri); this is that rule for the parts our URI has,
    without importing Airflow into the command line.
    """
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme:
        return uri
    return urllib.parse.urlunsplit(parts._replace(scheme=parts.scheme.lower(),
                                                  path=parts.path.rstrip("/") or "/", fragment=""))


def asset_id(api: AirflowApi, uri: str, headers: Mapping[str, str]) -> int:
    """The numeric id Airflow gave the asset `uri` (the search is a substring match: keep the same URI)."""
    wanted = normalized_uri(uri)
    answer = _request(api, "GET", "/api/v2/assets", headers=headers,
                      query={"uri_pattern": uri.rstrip("/"), "limit": 100})
    for asset in (answer or {}).get("assets", []):
        if normalized_uri(str(asset.get("uri", ""))) == wanted:
            return int(asset["id"])
    raise AssetEventError(
        f"Airflow at {api.base_url} does not know the asset {uri}; has its dag-processor parsed "
        "dags/recsys_materialize.py (which is scheduled on it)?"
    )


def fire_champion_changed(api: AirflowApi, version: str, source: str) -> dict[str, Any]:
    """Post an event of `prismrec://champion` with extra {"version", "source"}; returns Airflow's event."""
    headers = auth_headers(api)
    ident = asset_id(api, CHAMPION_URI, headers)
    event = _request(api, "POST", "/api/v2/assets/events", headers=headers,
                     body={"asset_id": ident, "extra": {"version": str(version), "source": source}})
    log.info("asset event %s of %s (asset id %d) posted to %s", (event or {}).get("id"), CHAMPION_URI,
             ident, api.base_url)
    return event or {}


def set_run_note(api: AirflowApi, dag_id: str, run_id: str, note: str) -> bool:
    """Write `note` on a DAG run (PATCH /api/v2/dags/{dag_id}/dagRuns/{run_id}); False when this
    Airflow does not know the run (an in-process `prismrec train` run, kept in its own SQLite DB)."""
    path = f"/api/v2/dags/{urllib.parse.quote(dag_id)}/dagRuns/{urllib.parse.quote(run_id, safe='')}"
    try:
        _request(api, "PATCH", path, headers=auth_headers(api), body={"note": note[:1000]})
    except AssetEventError as exc:
        if "HTTP 404" in str(exc):
            return False
        raise
    return True
