"""What the CLI's Airflow client says when the live api-server refuses it, and the lookups it relies on:
wrong or missing credentials, an unknown asset, an unreachable server, a run note for a run that
this Airflow does not know (an in-process `prismrec train`)."""

from __future__ import annotations

import pytest

from tasks.contracts import CHAMPION_URI
from tasks.registry.champion_events import (
    AirflowApi,
    AssetEventError,
    asset_id,
    auth_headers,
    fire_champion_changed,
    set_run_note,
)
from tests.live.stack import ADMIN

pytestmark = pytest.mark.slow


def test_asset_event_failures_say_what_went_wrong(live):
    url = live.airflow_url
    assert AirflowApi.from_env({}) is None
    with pytest.raises(AssetEventError, match="HTTP 401 .*PRISMREC_AIRFLOW_API_TOKEN"):
        fire_champion_changed(AirflowApi(base_url=url), "5", "cli promote")  # no credentials
    with pytest.raises(AssetEventError, match="HTTP 401"):
        auth_headers(AirflowApi(base_url=url, username=ADMIN[0], password="wrong"))

    api = AirflowApi(base_url=url, username=ADMIN[0], password=ADMIN[1])
    headers = auth_headers(api)
    # Airflow keeps the URI in its own normal form (with a trailing slash); the lookup finds it either way.
    assert asset_id(api, CHAMPION_URI, headers) == asset_id(api, CHAMPION_URI + "/", headers)
    with pytest.raises(AssetEventError, match="does not know the asset prismrec://champion-old"):
        asset_id(api, "prismrec://champion-old", headers)
    with pytest.raises(AssetEventError, match="cannot reach the Airflow API server at http://127.0.0.1:9"):
        fire_champion_changed(AirflowApi(base_url="http://127.0.0.1:9", timeout_s=2), "5", "cli promote")


def test_a_run_note_for_a_run_this_airflow_does_not_know_is_skipped(live):
    """`register` writes the gate's verdict as its run's note through REST; an in-process run
    (`prismrec train` with PRISMREC_AIRFLOW_API_URL set) is not this Airflow's: no note, no error."""
    api = AirflowApi(base_url=live.airflow_url, username=ADMIN[0], password=ADMIN[1])
    assert set_run_note(api, "recsys_training", "manual__2026-12-04T00:00:00+00:00", "the gate passed v1") is False
    with pytest.raises(AssetEventError, match="HTTP 401"):
        set_run_note(AirflowApi(base_url=live.airflow_url), "recsys_training", "manual__x", "note")
