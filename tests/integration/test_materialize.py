"""Publishing on real Postgres and a real MLflow champion: exact rows, atomic swap, idempotence.

The champion here is a small real pyfunc (models-from-code, logged and registered through
`tasks.registry.register_candidate`) with known item scores, so every published row can be
predicted by hand. Nothing is trained in this module.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.errors import NoChampionError

APP, RECO, MODEL = "pub_app", "pub_reco", "materialize_test"
TABLE = f'{RECO}."user_recommendations"'

# Items 10..80 score 0.8 down to 0.1: the best unseen items are easy to predict by hand.
SCORES = {str(item): round(0.9 - item / 100, 2) for item in range(10, 90, 10)}
# user -> history in time order (first watched first).
HISTORIES = {1: [20, 10], 2: [30], 3: [10, 20, 30, 40, 50, 60], 4: [80], 5: [50, 10]}
EXPECTED_TOP3 = {1: [30, 40, 50], 2: [10, 20, 40], 3: [70, 80], 4: [10, 20, 30], 5: [20, 30, 40]}

TOY_MODEL_CODE = '''
import json
from pathlib import Path

import mlflow
import pandas as pd


class ToyModel(mlflow.pyfunc.PythonModel):
    """Ranks a fixed score table, skipping the user's history unless told to leak it."""

    def load_context(self, context):
        folder = Path(context.artifacts["model_dir"])
        self.scores = {int(i): s for i, s in json.loads((folder / "scores.json").read_text()).items()}
        self.leak = (folder / "LEAK").exists()

    def predict(self, context, model_input: pd.DataFrame, params=None):
        top_k = int((params or {}).get("top_k", 10))
        ranked = sorted(self.scores, key=lambda i: -self.scores[i])
        rows = []
        for user_id, history in zip(model_input["user_id"], model_input["history"]):
            seen = set() if self.leak else {int(i) for i in history}
            fresh = [i for i in ranked if i not in seen][:top_k]
            rows += [(int(user_id), rank, item, self.scores[item], rank % 2, f"because you watched {history[-1]}")
                     for rank, item in enumerate(fresh, 1)]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "interest_id", "explanation"])


mlflow.models.set_model(ToyModel())
'''


@pytest.fixture(scope="module")
def mat_config(config):
    return dataclasses.replace(
        config,
        database=dataclasses.replace(config.database, app_schema=APP, reco_schema=RECO),
        registry=dataclasses.replace(config.registry, model_name=MODEL),
        materialize=dataclasses.replace(config.materialize, top_k=3, batch_users=2),
    )


@pytest.fixture(scope="module")
def interactions(engine) -> None:
    start = datetime(2000, 1, 1, tzinfo=timezone.utc)
    rows = [
        {"user_id": user, "item_id": item, "rating": 4.0, "occurred_at": start + timedelta(days=user, hours=n)}
        for user, history in HISTORIES.items() for n, item in enumerate(history)
    ]
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {APP} cascade; create schema {APP}"))
        conn.execute(sa.text(
            f"create table {APP}.interactions (user_id bigint, item_id bigint, rating real, occurred_at timestamptz)"
        ))
        # Inserted newest first so that only `order by occurred_at` yields the time order.
        conn.execute(sa.text(f"insert into {APP}.interactions values (:user_id, :item_id, :rating, :occurred_at)"),
                     rows[::-1])
        conn.execute(sa.text(f"drop schema if exists {RECO} cascade"))


def _log_toy_champion(config, root: Path, code: Path, tag: str, leak: bool = False) -> str:
    from tasks.registry import register_candidate

    model_dir = root / f"model-{tag}"
    model_dir.mkdir()
    (model_dir / "scores.json").write_text(json.dumps(SCORES))
    if leak:
        (model_dir / "LEAK").touch()
    registered = register_candidate(
        config, model_dir=model_dir, run_dir=root / f"run-{tag}",
        evaluation={"candidate": {"valid": {"ndcg@10": 0.2}}},
        decision={"passed": True, "reasons": ["test champion"]},
        lineage={"run_key": tag}, model_code=code,
    )
    return registered.version


@pytest.fixture(scope="module")
def toy_champion(mat_config, tmp_path_factory) -> dict:
    """The champion that gets published: a toy pyfunc with known scores (see module doc)."""
    root = tmp_path_factory.mktemp("materialize-models")
    code = root / "toy_model.py"
    code.write_text(TOY_MODEL_CODE)
    return {"version": _log_toy_champion(mat_config, root, code, "good"), "root": root, "code": code}


def _published(engine) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql_query(sa.text(f"select * from {TABLE} order by user_id, rank"), conn)


@pytest.fixture(scope="module")
def first_publication(mat_config, engine, interactions, toy_champion):
    from tasks.materialize import materialize

    summary = materialize(mat_config)
    return summary, _published(engine)


def test_no_champion_raises_before_touching_postgres(mat_config, engine, interactions):
    from tasks.materialize import materialize

    nobody = dataclasses.replace(mat_config, registry=dataclasses.replace(mat_config.registry, model_name="no_champion"))
    with pytest.raises(NoChampionError, match="prismrec train"):
        materialize(nobody)
    assert not sa.inspect(engine).has_schema(RECO) or not sa.inspect(engine).has_table("user_recommendations", RECO)


def test_read_histories_are_time_ordered(mat_config, engine, interactions):
    from tasks.materialize import read_histories

    histories = read_histories(engine, mat_config)
    assert dict(zip(histories["user_id"], histories["history"])) == HISTORIES


def test_publishes_top_k_unseen_items_for_every_user(first_publication, toy_champion, engine):
    summary, rows = first_publication
    assert summary.rows == 14 and summary.users == 5
    assert summary.model_version == toy_champion["version"]
    assert summary.to_dict()["generated_at"] == summary.generated_at.isoformat()
    assert {u: g["item_id"].tolist() for u, g in rows.groupby("user_id")} == EXPECTED_TOP3
    assert rows.groupby("user_id")["rank"].apply(list).to_dict()[3] == [1, 2]
    user1 = rows[rows["user_id"] == 1]
    assert user1["score"].tolist() == pytest.approx([0.6, 0.5, 0.4])
    assert user1["explanation"].unique().tolist() == ["because you watched 10"]
    assert user1["interest_id"].tolist() == [1, 0, 1]
    assert set(rows["model_name"]) == {MODEL} and set(rows["model_version"]) == {summary.model_version}
    assert rows["generated_at"].nunique() == 1
    with engine.connect() as conn:
        table_comment = conn.execute(sa.text(f"select obj_description('{TABLE}'::regclass)")).scalar_one()
        pk = conn.execute(sa.text(
            "select pg_get_constraintdef(oid) from pg_constraint where conrelid = cast(:t as regclass) and contype = 'p'"
        ), {"t": TABLE}).scalar_one()
        rank_comment = conn.execute(sa.text(
            f"select col_description('{TABLE}'::regclass, 2)"
        )).scalar_one()
    assert table_comment.startswith("Top-k recommendations per user")
    assert rank_comment.startswith("1 = best")
    assert pk == "PRIMARY KEY (user_id, rank)"


def test_rerun_for_the_same_champion_replaces_rows(mat_config, first_publication, engine):
    from tasks.materialize import materialize

    _, before = first_publication
    summary = materialize(mat_config)
    after = _published(engine)
    assert summary.rows == len(after) == len(before) == 14
    cols = ["user_id", "rank", "item_id", "model_version"]
    pd.testing.assert_frame_equal(after[cols], before[cols])
    assert after["generated_at"].nunique() == 1  # one publication, not a mix of two
    with engine.connect() as conn:  # the session-private staging table is gone
        assert conn.execute(sa.text("select to_regclass('pg_temp.user_recommendations_staging')")).scalar() is None


def test_failure_inside_the_swap_keeps_the_published_set(mat_config, first_publication, engine):
    """A trigger that fails the INSERT proves DELETE and INSERT share one transaction."""
    from tasks.materialize import materialize

    before = _published(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "create function pub_reco.refuse() returns trigger language plpgsql as "
            "$$ begin raise exception 'injected failure during the swap'; end $$"
        ))
        conn.execute(sa.text(
            f"create trigger refuse after insert on {TABLE} for each statement execute function pub_reco.refuse()"
        ))
    try:
        with pytest.raises(sa.exc.DBAPIError, match="injected failure during the swap"):
            materialize(mat_config)
        pd.testing.assert_frame_equal(_published(engine), before)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop trigger refuse on {TABLE}; drop function pub_reco.refuse()"))


def test_a_champion_that_recommends_seen_items_is_refused(mat_config, first_publication, toy_champion, engine):
    from tasks.materialize import materialize
    from tasks.registry import champion_version, rollback

    before = _published(engine)
    leaky = _log_toy_champion(mat_config, toy_champion["root"], toy_champion["code"], "leaky", leak=True)
    assert champion_version(mat_config) == leaky
    try:
        with pytest.raises(RuntimeError, match="already in the user's history"):
            materialize(mat_config)
        pd.testing.assert_frame_equal(_published(engine), before)
    finally:
        assert rollback(mat_config) == toy_champion["version"]


def test_no_champion_leaves_the_published_set_untouched(mat_config, first_publication, engine):
    from tasks.materialize import materialize

    before = _published(engine)
    nobody = dataclasses.replace(mat_config, registry=dataclasses.replace(mat_config.registry, model_name="no_champion"))
    with pytest.raises(NoChampionError):
        materialize(nobody)
    pd.testing.assert_frame_equal(_published(engine), before)


def _untrained_model_dir(folder: Path, item_ids: list[int]) -> Path:
    """A PrismRec model folder in the training checkpoint format, with untrained weights."""
    import torch

    from tasks.model.network import ModelSpec, PrismRecNet
    from tasks.model.recommender import CHECKPOINT

    torch.manual_seed(0)
    spec = ModelSpec(n_items=len(item_ids), max_history=8, dim=16, n_interests=2, user_layers=1, user_heads=2,
                     dropout=0.0, lm_trainable_layers=0, max_text_tokens=8, use_id_embedding=True)
    net = PrismRecNet(spec)
    folder.mkdir(parents=True)
    torch.save({"spec": spec.to_dict(), "state_dict": net.state_dict(),
                "item_text_vectors": torch.randn(len(item_ids) + 1, 384)}, folder / CHECKPOINT)
    pd.DataFrame({"idx": range(1, len(item_ids) + 1), "item_id": item_ids,
                  "title": [f"Movie {i}" for i in item_ids], "genres": "Drama"}).to_parquet(folder / "items.parquet")
    (folder / "history.json").write_text(json.dumps([{"epoch": 1, "train_loss": 1.0}]))
    return folder


@pytest.fixture(scope="module")
def real_model_dir(request, tmp_path_factory) -> Path:
    """A real PrismRec model folder: the session's trained model when conftest offers one
    (fixture `trained_model_dir`), else an untrained network in the same format."""
    try:
        return Path(request.getfixturevalue("trained_model_dir"))
    except pytest.FixtureLookupError:
        return _untrained_model_dir(tmp_path_factory.mktemp("real-model") / "model", sorted(map(int, SCORES)))


def test_real_pyfunc_champion_publishes_unseen_catalogue_items(mat_config, engine, interactions, real_model_dir,
                                                               tmp_path):
    """The lead's mlflow/prismrec_model.py end to end: registered, loaded @champion, published."""
    from tasks.materialize import materialize
    from tasks.registry import register_candidate

    config = dataclasses.replace(
        mat_config,
        database=dataclasses.replace(mat_config.database, reco_schema="pub_reco_real"),
        registry=dataclasses.replace(mat_config.registry, model_name="materialize_real"),
    )
    version = register_candidate(
        config, model_dir=real_model_dir, run_dir=tmp_path / "run",
        evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": True, "reasons": ["test"]},
        lineage={"run_key": "real"},
    ).version
    summary = materialize(config)

    catalogue = set(pd.read_parquet(real_model_dir / "items.parquet")["item_id"].astype(int))
    with engine.connect() as conn:
        rows = pd.read_sql_query(sa.text(
            'select * from pub_reco_real."user_recommendations" order by user_id, rank'), conn)
    assert summary.model_version == version and set(rows["model_version"]) == {version}
    assert summary.rows == len(rows)
    for user, history in HISTORIES.items():
        mine = rows[rows["user_id"] == user]
        expected = min(3, len(catalogue - set(history)))
        assert mine["rank"].tolist() == list(range(1, expected + 1))
        assert set(mine["item_id"]) <= catalogue - set(history)
        assert mine["score"].is_monotonic_decreasing
        assert all(text.startswith("because you watched ") for text in mine["explanation"])


def test_concurrent_publishers_leave_one_complete_set(mat_config, first_publication, engine):
    """Whatever the interleaving, both runs succeed and exactly one run's rows remain."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.materialize import materialize

    with ThreadPoolExecutor(2) as pool:
        summaries = list(pool.map(lambda _: materialize(mat_config), range(2)))
    rows = _published(engine)
    assert [s.rows for s in summaries] == [14, 14]
    assert len(rows) == 14 and rows["generated_at"].nunique() == 1
    assert rows["generated_at"].iloc[0] in {pd.Timestamp(s.generated_at) for s in summaries}
