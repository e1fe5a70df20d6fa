"""Publishing on real Postgres with a real, registered PrismRec champion (the test run's tiny trained model).

Every published row is checked against what the model itself returns for the same
histories, so the tests pin the plumbing (ids, ranks, titles, flags, lineage) exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.errors import ConfigError, NoChampionError

APP, RECO, MODEL = "pub_app", "pub_reco", "materialize_test"
VIEW = f'{RECO}."user_recommendations"'
UNKNOWN_ITEM = 99_999_999
D1 = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def recommender(trained_model_dir):
    from tasks.model.recommender import Recommender

    return Recommender.load(trained_model_dir)


@pytest.fixture(scope="module")
def histories(recommender) -> dict[int, list[int]]:
    """user -> history (oldest first): three real users, one with only an unknown item, one with none."""
    ids = [int(i) for i in recommender.item_ids]
    return {1: ids[10:15][::-1], 2: [ids[3], ids[40]], 3: ids[100:110], 4: [UNKNOWN_ITEM], 5: []}


@pytest.fixture(scope="module")
def mat_config(config):
    return dataclasses.replace(
        config,
        database=dataclasses.replace(config.database, app_schema=APP, reco_schema=RECO),
        registry=dataclasses.replace(config.registry, model_name=MODEL),
        materialize=dataclasses.replace(config.materialize, top_k=5, batch_users=2, keep_runs=2, similar_top_k=4),
    )


@pytest.fixture(scope="module")
def app_data(engine, histories) -> None:
    start = datetime(2000, 1, 1, tzinfo=UTC)
    rows = [{"user_id": u, "item_id": i, "rating": 4.0, "occurred_at": start + timedelta(days=u, hours=n)}
            for u, history in histories.items() for n, i in enumerate(history)]
    with engine.begin() as conn:
        conn.execute(sa.text(f"drop schema if exists {APP} cascade; create schema {APP}; drop schema if exists {RECO} cascade"))
        conn.execute(sa.text(f"create table {APP}.interactions (user_id bigint, item_id bigint, rating real, occurred_at timestamptz)"))
        conn.execute(sa.text(f"create table {APP}.users (user_id bigint primary key)"))
        # Newest first, so only `order by occurred_at` yields the time order.
        conn.execute(sa.text(f"insert into {APP}.interactions values (:user_id, :item_id, :rating, :occurred_at)"), rows[::-1])
        conn.execute(sa.text(f"insert into {APP}.users select generate_series(1, 5)"))


@pytest.fixture(scope="module")
def champion(mat_config, trained_model_dir, tmp_path_factory) -> dict:
    from tasks.registry.store import register_candidate

    registered = register_candidate(
        mat_config, model_dir=trained_model_dir, run_dir=tmp_path_factory.mktemp("pub-run") / "run",
        evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": True, "reasons": ["test"]},
        lineage={"run_key": "materialize-test"})
    return registered.to_dict()


def _read(engine, query: str, **params) -> pd.DataFrame:
    with engine.connect() as conn:
        return pd.read_sql_query(sa.text(query), conn, params=params)


@pytest.fixture(scope="module")
def first_publication(mat_config, engine, app_data, champion):
    from tasks.publish.materialize import materialize

    summary = materialize(mat_config, logical_date=D1)
    return summary, _read(engine, f"select * from {VIEW} order by user_id, rank")


def test_no_champion_raises_before_touching_postgres(mat_config, engine, app_data):
    from tasks.publish.materialize import materialize

    nobody = dataclasses.replace(mat_config, registry=dataclasses.replace(mat_config.registry, model_name="nobody"))
    with pytest.raises(NoChampionError, match="prismrec train"):
        materialize(nobody)
    assert not sa.inspect(engine).has_schema(RECO)


def test_a_champion_of_a_newer_model_format_is_refused_by_name_and_nothing_changes(
        mat_config, first_publication, engine, trained_model_dir, tmp_path):
    """A model written by a newer PrismRec (one that may hold files this version would ignore) is
    refused when it loads, before any write: the current set and the runs table stay as they were."""
    import shutil

    import torch

    from tasks.errors import RegistryError
    from tasks.layout import MODEL_FORMAT, ModelFiles
    from tasks.publish.materialize import materialize
    from tasks.registry.store import register_candidate

    assert torch.load(ModelFiles(trained_model_dir).checkpoint, weights_only=False)["format"] == MODEL_FORMAT
    newer = ModelFiles(tmp_path / "newer")
    shutil.copytree(trained_model_dir, newer.root)
    checkpoint = torch.load(newer.checkpoint, weights_only=False)
    torch.save({**checkpoint, "format": MODEL_FORMAT + 1}, newer.checkpoint)
    other = dataclasses.replace(mat_config, registry=dataclasses.replace(mat_config.registry, model_name=f"{MODEL}_newer"))
    register_candidate(other, model_dir=newer.root, run_dir=tmp_path / "run",
                       evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": True, "reasons": ["test"]},
                       lineage={"run_key": "materialize-test-newer"})
    lists = _read(engine, f"select * from {VIEW} order by user_id, rank")
    runs = _read(engine, f"select * from {RECO}.runs order by materialization_id")
    with pytest.raises(RegistryError, match=rf"format {MODEL_FORMAT + 1}, written by a newer PrismRec.*prismrec rollback"):
        materialize(other, logical_date=D1 + timedelta(days=30))
    pd.testing.assert_frame_equal(_read(engine, f"select * from {VIEW} order by user_id, rank"), lists)
    pd.testing.assert_frame_equal(_read(engine, f"select * from {RECO}.runs order by materialization_id"), runs)


def test_read_histories_are_time_ordered_and_include_users_without_events(mat_config, engine, app_data, histories):
    from tasks.publish.materialize import read_histories

    users = read_histories(engine, mat_config)
    assert {u: h.tolist() for u, h in zip(users["user_id"], users["history"])} == histories


def test_integer_columns_of_any_width_leave_postgres_in_binary(engine):
    """copy_out_int64 reads COPY's binary format: smallint, integer and bigint alike, in query order;
    a null is refused by name rather than misread."""
    from tasks import db

    with engine.begin() as conn:
        conn.execute(sa.text("drop table if exists pub_widths; create table pub_widths (s smallint, i integer, b bigint)"))
        conn.execute(sa.text("insert into pub_widths values (1, -2, 3000000000), (-4, 70000, -5), (7, 8, 9)"))
        got = db.copy_out_int64(conn, "select s, i, b from pub_widths order by s", ("s", "i", "b"))
        assert {c: v.tolist() for c, v in got.items()} == {"s": [-4, 1, 7], "i": [70000, -2, 8],
                                                             "b": [-5, 3000000000, 9]}
        assert all(v.dtype == np.int64 for v in got.values())
        empty = db.copy_out_int64(conn, "select s from pub_widths where false", ("s",))
        assert empty["s"].dtype == np.int64 and empty["s"].size == 0
        conn.execute(sa.text("insert into pub_widths values (10, null, 11)"))
        with pytest.raises(ValueError, match="a null"):
            db.copy_out_int64(conn, "select s, i, b from pub_widths order by s", ("s", "i", "b"))
        conn.execute(sa.text("drop table pub_widths"))


def test_published_lists_are_the_models_lists(first_publication, recommender, histories, champion):
    summary, rows = first_publication
    expected = recommender.recommend(list(histories.values()), 5)
    assert summary.users == 5 and summary.rows == len(rows) == 25 and not summary.reused
    for position, (user, history) in enumerate(histories.items()):
        mine = rows[rows["user_id"] == user]
        assert mine["rank"].tolist() == [1, 2, 3, 4, 5]
        assert mine["item_id"].tolist() == expected.item_ids[position].tolist()
        assert mine["interest_id"].tolist() == expected.interest_ids[position].tolist()
        assert mine["explanation"].tolist() == list(expected.explanations[position])
        assert mine["is_new_item"].tolist() == expected.is_new[position].tolist()
        # The same lists exactly (above); the scores up to float32 sums taken in another order (the publication's
        # batches and threads against this process's: 3e-6 apart on a bf16 Xeon under xdist).
        assert mine["score"].to_numpy() == pytest.approx(expected.scores[position], rel=1e-4)
        assert not set(mine["item_id"]) & set(history)
    from tasks.titles import display_titles

    # Display titles, as the explanations write them ("The Piano", not the catalogue's "Piano, The").
    titles = pd.Series(display_titles(recommender.items["title"]), index=recommender.items["item_id"])
    assert rows["title"].tolist() == titles.loc[rows["item_id"]].tolist()
    assert not rows["title"].str.contains(r", (?:The|A|An)$").any()
    assert set(rows["model_name"]) == {MODEL} and set(rows["model_version"]) == {champion["version"]}
    assert set(rows["run_id"]) == {champion["run_id"]} == {summary.run_id}
    assert rows["generated_at"].nunique() == 1 and set(rows["materialization_id"]) == {summary.materialization_id}


def test_users_without_usable_history_get_the_flagged_popularity_list(first_publication, recommender):
    from tasks.model.recommender import FALLBACK_EXPLANATION

    summary, rows = first_publication
    fallback = rows[rows["is_fallback"]]
    assert set(fallback["user_id"]) == {4, 5} and summary.fallback_users == 2
    assert set(fallback["interest_id"]) == {-1} and set(fallback["explanation"]) == {FALLBACK_EXPLANATION}
    counts = recommender.items.set_index("item_id")["train_interactions"]
    for user in (4, 5):
        listed = counts.loc[fallback[fallback["user_id"] == user]["item_id"]].tolist()
        assert listed == sorted(counts, reverse=True)[:5]
    assert not rows[~rows["is_fallback"]]["interest_id"].lt(0).any()


def test_user_interests_explain_each_list(first_publication, engine):
    summary, rows = first_publication
    interests = _read(engine, f"select * from {RECO}.user_interests order by user_id, interest_id")
    assert summary.interest_rows == len(interests)
    for user, mine in interests.groupby("user_id"):
        listed = rows[rows["user_id"] == user]["interest_id"].value_counts(normalize=True).sort_index()
        assert mine["interest_id"].tolist() == listed.index.tolist()
        assert mine["weight"].to_numpy() == pytest.approx(listed.to_numpy(), abs=1e-6)
    real = interests[~interests["is_fallback"]]
    assert real["label"].str.len().gt(3).all() and real["label"].str.contains(" — like ").any()
    assert interests[interests["is_fallback"]]["user_id"].tolist() == [4, 5]


def test_similar_items_come_from_the_item_tower(first_publication, engine, recommender):
    summary, _ = first_publication
    similar = _read(engine, f"select * from {RECO}.similar_items order by item_id, rank")
    item_ids, similar_ids, cosine = recommender.similar_items(4)
    assert summary.similar_rows == len(similar) == len(item_ids) * 4
    first = similar[similar["item_id"] == item_ids[0]]
    assert first["similar_item_id"].tolist() == similar_ids[0].tolist()
    assert first["score"].to_numpy() == pytest.approx(cosine[0], abs=1e-6)
    assert not (similar["item_id"] == similar["similar_item_id"]).any()


def test_every_table_view_and_column_is_commented_and_indexed(first_publication, engine):
    undocumented = _read(engine, """
        select c.relname, a.attname from pg_class c join pg_namespace n on n.oid = c.relnamespace
        left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
        where n.nspname = :schema and c.relkind in ('r', 'p', 'v') and c.relname !~ '_m[0-9]+$'
          and (obj_description(c.oid, 'pg_class') is null or (a.attname is not null and col_description(c.oid, a.attnum) is null))
    """, schema=RECO)
    assert undocumented.empty, undocumented
    views = set(_read(engine, "select table_name from information_schema.views where table_schema = :s", s=RECO)["table_name"])
    assert views == {"user_recommendations", "user_interests", "similar_items", "item_exposure"}
    indexes = _read(engine, "select indexdef from pg_indexes where schemaname = :s and tablename like '%%_history'", s=RECO)
    defs = " | ".join(indexes["indexdef"])
    assert "user_recommendations_history USING btree (materialization_id, user_id, rank)" in defs
    assert "user_recommendations_history USING btree (materialization_id, item_id, rank)" in defs


def test_item_exposure_counts_the_current_lists(first_publication, engine):
    _, rows = first_publication
    exposure = _read(engine, f"select * from {RECO}.item_exposure order by users desc, item_id")
    counts = rows.groupby("item_id").size()
    assert dict(zip(exposure["item_id"], exposure["users"])) == counts.to_dict()


def test_runs_row_records_the_publication(first_publication, engine, champion):
    summary, _ = first_publication
    run = _read(engine, f"select * from {RECO}.runs where materialization_id = :m", m=summary.materialization_id).iloc[0]
    assert run["status"] == "succeeded" and run["is_current"] and run["output_kept"]
    assert (run["model_version"], run["run_id"], run["rows"], run["users"]) == (champion["version"], champion["run_id"], 25, 5)
    assert run["logical_date"] == pd.Timestamp(D1) and run["finished_at"] >= run["started_at"] and run["error"] is None
    # A catalogue this small is ranked whole ("auto" uses the candidate index from 20,000 items).
    assert run["retrieval"] == "exact" and run["retrieval_recall"] is None and summary.retrieval == "exact"


def test_rerun_for_the_same_champion_and_date_is_idempotent(mat_config, first_publication, engine):
    from tasks.publish.materialize import materialize

    summary, before = first_publication
    runs_before = _read(engine, f"select count(*) as n from {RECO}.runs")["n"].item()
    again = materialize(mat_config, logical_date=D1)
    assert again.reused and again.materialization_id == summary.materialization_id and again.rows == summary.rows
    pd.testing.assert_frame_equal(_read(engine, f"select * from {VIEW} order by user_id, rank"), before)
    assert _read(engine, f"select count(*) as n from {RECO}.runs")["n"].item() == runs_before


def test_failure_inside_the_swap_keeps_the_current_set_and_marks_the_run_failed(mat_config, first_publication, engine):
    """A trigger refusing the final `succeeded` update proves the swap and the run row share one transaction."""
    from tasks.publish.materialize import materialize

    before = _read(engine, f"select * from {VIEW} order by user_id, rank")
    with engine.begin() as conn:
        conn.execute(sa.text(
            f"create function {RECO}.refuse() returns trigger language plpgsql as $$ begin "
            "if new.status = 'succeeded' then raise exception 'injected failure during the swap'; end if; "
            "return new; end $$"))
        conn.execute(sa.text(f"create trigger refuse before update on {RECO}.runs for each row execute function {RECO}.refuse()"))
    try:
        with pytest.raises(sa.exc.DBAPIError, match="injected failure during the swap"):
            materialize(mat_config, logical_date=D1 + timedelta(days=1))
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"drop trigger refuse on {RECO}.runs; drop function {RECO}.refuse()"))
    pd.testing.assert_frame_equal(_read(engine, f"select * from {VIEW} order by user_id, rank"), before)
    failed = _read(engine, f"select * from {RECO}.runs order by materialization_id desc limit 1").iloc[0]
    assert failed["status"] == "failed" and "injected failure during the swap" in failed["error"]
    assert not failed["is_current"] and not failed["output_kept"]
    leftovers = _read(engine, "select tablename from pg_tables where schemaname = :s and tablename ~ :p",
                      s=RECO, p=f"_m{failed['materialization_id']}$")
    assert leftovers.empty


def test_retention_keeps_the_newest_runs_and_the_current_set(mat_config, first_publication, engine):
    from tasks.publish.materialize import materialize

    summaries = [materialize(mat_config) for _ in range(2)]
    kept = _read(engine, f"select materialization_id from {RECO}.runs where output_kept order by 1")["materialization_id"]
    assert kept.tolist() == [s.materialization_id for s in summaries]  # keep_runs = 2
    partitions = _read(engine, "select tablename from pg_tables where schemaname = :s and tablename ~ '_m[0-9]+$'", s=RECO)
    assert len(partitions) == 2 * 3
    current = _read(engine, f"select distinct materialization_id from {VIEW}")["materialization_id"].tolist()
    assert current == [summaries[-1].materialization_id]
    history = _read(engine, f"select materialization_id, count(*) as n from {RECO}.user_recommendations_history group by 1")
    assert history["n"].tolist() == [25, 25]


def test_concurrent_publishers_leave_one_complete_set_from_the_newest(mat_config, first_publication, engine):
    """Two publishers at once: whichever swaps first, the run that started last is current, complete, and
    the other either went first or was refused as older (never a mix, never the older one last)."""
    from concurrent.futures import ThreadPoolExecutor

    from tasks.errors import SupersededError
    from tasks.publish.materialize import materialize

    def publish(_):
        try:
            return materialize(mat_config)
        except SupersededError as refused:
            return refused

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(publish, range(2)))
    published = [o for o in outcomes if not isinstance(o, SupersededError)]
    assert published and all(o.rows == 25 for o in published)
    rows = _read(engine, f"select * from {VIEW}")
    assert len(rows) == 25 and rows["materialization_id"].nunique() == 1
    both = _read(engine, f"select materialization_id, status from {RECO}.runs order by generated_at desc limit 2")
    assert rows["materialization_id"].iloc[0] == both["materialization_id"].iloc[0]  # the newest won
    assert set(both["status"]) <= {"succeeded", "failed"}


def test_an_older_run_never_replaces_a_newer_current_set(mat_config, first_publication, engine):
    from tasks.errors import SupersededError
    from tasks.publish.materialize import materialize

    older, newer = (materialize(mat_config, logical_date=D1 + timedelta(days=d)) for d in (50, 60))
    before = _read(engine, f"select * from {VIEW} order by user_id, rank")
    assert before["materialization_id"].iloc[0] == newer.materialization_id
    with pytest.raises(SupersededError, match="older than the current set"):
        materialize(mat_config, logical_date=D1 + timedelta(days=30))  # a slow run that started earlier
    pd.testing.assert_frame_equal(_read(engine, f"select * from {VIEW} order by user_id, rank"), before)
    last = _read(engine, f"select * from {RECO}.runs order by materialization_id desc limit 1").iloc[0]
    assert last["status"] == "failed" and "never replaces a newer one" in last["error"] and not last["output_kept"]
    with pytest.raises(SupersededError):  # nor does a rerun of an older date whose output is still kept
        materialize(mat_config, logical_date=D1 + timedelta(days=50))
    pd.testing.assert_frame_equal(_read(engine, f"select * from {VIEW} order by user_id, rank"), before)
    assert older.materialization_id != newer.materialization_id


def test_history_tables_of_an_older_version_gain_the_new_column(mat_config, first_publication, engine):
    """A reco schema published before `is_new_item` existed: the next publication adds the column
    (earlier rows read false) and recreates the views over it."""
    from tasks.publish.materialize import materialize

    with engine.begin() as conn:
        conn.execute(sa.text(f"drop view {VIEW} cascade"))
        conn.execute(sa.text(f"alter table {RECO}.user_recommendations_history drop column is_new_item"))
        conn.execute(sa.text(f"alter table {RECO}.runs drop column retrieval, drop column retrieval_recall"))
    older = _read(engine, f"select materialization_id from {RECO}.runs where is_current")["materialization_id"].item()
    summary = materialize(mat_config)
    rows = _read(engine, f"select * from {VIEW} order by user_id, rank")
    assert len(rows) == summary.rows == 25 and rows["is_new_item"].dtype == bool
    old_rows = _read(engine, f"select is_new_item from {RECO}.user_recommendations_history where materialization_id = :m",
                     m=older)
    assert len(old_rows) == 25 and not old_rows["is_new_item"].any()
    runs = _read(engine, f"select materialization_id, retrieval from {RECO}.runs order by materialization_id")
    assert runs["retrieval"].iloc[-1] == "exact" and runs["retrieval"].iloc[:-1].isna().all()
    assert _read(engine, f"select count(*) as n from {RECO}.item_exposure")["n"].item() > 0


@pytest.mark.parametrize("probes, min_recall", [(1000, 0.9), (1, 0.0), (1, 1.0)])
def test_lists_from_the_candidate_index_record_their_recall(mat_config, first_publication, engine, recommender,
                                                            histories, probes, min_recall):
    """materialize.retrieval = index: every cell visited lists exactly what exact ranking lists
    (recall 1); one cell of many lists less of it, and the run says how much; asked for a recall,
    the index probes more cells until the sample reaches it."""
    from tasks.publish.materialize import materialize

    config = dataclasses.replace(mat_config, materialize=dataclasses.replace(
        mat_config.materialize, retrieval="index", index_probes=probes, index_candidates=recommender.n_items,
        index_min_recall=min_recall))
    summary = materialize(config)
    run = _read(engine, f"select * from {RECO}.runs where materialization_id = :m", m=summary.materialization_id).iloc[0]
    assert run["retrieval"] == summary.retrieval and run["retrieval"].startswith("index: ")
    assert run["retrieval_recall"] == pytest.approx(summary.retrieval_recall, abs=1e-6)
    rows = _read(engine, f"select * from {VIEW} order by user_id, rank")
    expected = recommender.recommend(list(histories.values()), 5)
    same = all(rows[rows["user_id"] == user]["item_id"].tolist() == expected.item_ids[position].tolist()
               for position, user in enumerate(histories))
    probed = int(summary.retrieval.split(" lists, ")[1].split(" probed")[0])
    if min_recall == 0.0:
        assert 0.0 < summary.retrieval_recall < 1.0 and not same and probed == 1
    else:
        assert summary.retrieval_recall == 1.0 and same
        assert probed > 1  # tuned up from one cell (or capped at every cell)
    assert len(rows) == 25 and not rows.groupby("user_id")["item_id"].apply(lambda s: s.duplicated().any()).any()


@pytest.mark.parametrize("processes, retrieval", [(1, "exact"), (2, "index")])
def test_child_scoring_processes_publish_the_same_rows(mat_config, first_publication, engine, processes, retrieval,
                                                      caplog):
    """Scored in child processes under jemalloc/mimalloc (batches dealt out between them, the tuned
    index handed over), a publication holds exactly the rows scoring in the task's process gives."""
    from tasks.publish.materialize import materialize

    def publish(score_processes: int) -> tuple:
        config = dataclasses.replace(mat_config, materialize=dataclasses.replace(
            mat_config.materialize, score_processes=score_processes, score_process_min_users=0, batch_users=2,
            retrieval=retrieval, index_probes=2, index_min_recall=0.0))
        summary = materialize(config)
        columns = "user_id, rank, item_id, title, score, interest_id, explanation, is_new_item, is_fallback"
        return (summary, _read(engine, f"select {columns} from {VIEW} order by user_id, rank"),
                _read(engine, f"select user_id, interest_id, weight, label from {RECO}.user_interests "
                              "order by user_id, interest_id"))

    here, rows_here, interests_here = publish(0)
    with caplog.at_level(logging.INFO, logger="tasks.publish.scoring"):
        children, rows, interests = publish(processes)
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("scoring in ")]
    assert started and started[0].startswith(f"scoring in {processes} process(es)")
    shares = sorted(int(m.group(1)) for r in caplog.records
                    if (m := re.search(r"^scorer \d+: .* scoring (\d+) batches", r.getMessage())))
    assert shares == ([3] if processes == 1 else [1, 2])  # 5 users, 2 a batch: 3 batches, dealt out in turn
    assert children.materialization_id != here.materialization_id and len(rows) == 25
    pd.testing.assert_frame_equal(rows, rows_here)
    pd.testing.assert_frame_equal(interests, interests_here)
    assert (children.rows, children.interest_rows, children.fallback_users, children.retrieval) == (
        here.rows, here.interest_rows, here.fallback_users, here.retrieval)


def test_a_failing_scoring_process_publishes_nothing(mat_config, first_publication, engine, monkeypatch):
    from tasks.publish.materialize import materialize
    from tasks.publish.scoring import ScoringError

    before = _read(engine, f"select * from {VIEW} order by user_id, rank")
    monkeypatch.setenv("PRISMREC_FAULT_SCORING_EXIT", "3")  # the child exits with status 3 before scoring
    config = dataclasses.replace(mat_config, materialize=dataclasses.replace(
        mat_config.materialize, score_processes=1, score_process_min_users=0))
    with pytest.raises(ScoringError, match="scoring process 0 failed .exit status 3.*nothing was published"):
        materialize(config)
    pd.testing.assert_frame_equal(_read(engine, f"select * from {VIEW} order by user_id, rank"), before)
    failed = _read(engine, f"select status, error from {RECO}.runs order by materialization_id desc limit 1").iloc[0]
    assert failed["status"] == "failed" and "exit status 3" in failed["error"]


def test_unsafe_schema_names_are_refused(mat_config, champion):
    from tasks.publish.materialize import materialize

    bad = dataclasses.replace(mat_config, database=dataclasses.replace(mat_config.database, reco_schema='reco"; drop'))
    with pytest.raises(ConfigError, match="not a valid SQL identifier"):
        materialize(bad)


def test_rows_helpers_find_seen_items():
    from tasks.model.recommender import Recommendations
    from tasks.publish.rows import seen_items_recommended

    recs = Recommendations(item_ids=np.array([[5, 6], [7, -1]]), scores=np.zeros((2, 2)), interest_ids=np.zeros((2, 2), int),
                           because_item_ids=np.zeros((2, 2, 1), int), explanations=np.array([["", ""], ["", ""]], object))
    assert seen_items_recommended([np.array([1, 2]), np.array([3])], recs) == 0
    assert seen_items_recommended([np.array([6]), np.array([7, 5])], recs) == 2


@pytest.mark.parametrize("processes", [0, 1])
def test_a_trend_prior_publishes_what_the_source_was_busy_with_at_publication(
        mat_config, first_publication, engine, trained_model_dir, recommender, histories, tmp_path, processes, caplog):
    """A champion with a trend prior lifts the items of the source's own last days, counted when it publishes (not
    the counts saved at its training, which may be weeks old), in the task's process and in child processes."""
    import shutil

    from tasks.layout import ModelFiles
    from tasks.model.trend import TrendPrior
    from tasks.publish.materialize import materialize
    from tasks.registry.store import register_candidate

    model = ModelFiles(tmp_path / "model")
    shutil.copytree(trained_model_dir, model.root)
    stale = int(recommender.item_ids[500])  # in no history: very busy at training, long ago, and not since
    TrendPrior(window_days=7, weight=100.0, as_of_day=1, item_ids=[stale], counts=[10_000]).save(model.trend)
    name = f"{MODEL}_trend_{processes}"
    config = dataclasses.replace(
        mat_config, registry=dataclasses.replace(mat_config.registry, model_name=name),
        database=dataclasses.replace(mat_config.database, reco_schema=f"{RECO}_trend"),
        materialize=dataclasses.replace(mat_config.materialize, score_processes=processes, score_process_min_users=0))
    register_candidate(config, model_dir=model.root, run_dir=tmp_path / "run",
                       evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": True, "reasons": ["t"]},
                       lineage={"run_key": name})
    with caplog.at_level(logging.INFO, logger="tasks.publish.materialize"):
        materialize(config)
    assert any(re.match(r"trend prior: \d+ items' interactions on the 7 days to 2000-01-0\d", r.getMessage())
               for r in caplog.records)
    lists = _read(engine, f'select user_id, item_id from {RECO}_trend."user_recommendations" order by user_id, rank')
    # The app data spans 2000-01-02..06: every item someone took then has one interaction in the week, so with
    # weight 100 those lead every list where the user has not taken them; the stale item has none now.
    busy = {i for history in histories.values() for i in history} - {UNKNOWN_ITEM}
    for user in (1, 2, 3):
        top = lists[lists["user_id"] == user]["item_id"].tolist()
        assert set(top) <= busy - set(histories[user]) and len(top) == 5, (user, top)
    assert stale not in busy and stale not in set(lists["item_id"])


@pytest.mark.parametrize("retrieval", ["exact", "index"])
def test_a_transition_prior_publishes_the_successors_of_each_user_s_latest_items(
        mat_config, first_publication, engine, trained_model_dir, recommender, histories, tmp_path, retrieval):
    """A champion with a transition prior lifts what followed each user's latest items in its data (the table
    saved with it), ranked exactly or from the candidate index, which then takes the most lifted as candidates."""
    import shutil

    from tasks.layout import ModelFiles
    from tasks.model.transitions import TOP, TransitionPrior
    from tasks.publish.materialize import materialize
    from tasks.registry.store import register_candidate

    model = ModelFiles(tmp_path / "model")
    shutil.copytree(trained_model_dir, model.root)
    lead = int(recommender.item_ids[700])  # in no history; in the table, what always came next
    latest = sorted({h[-1] for h in histories.values() if h and h[-1] != UNKNOWN_ITEM})
    successors = np.full((len(latest), TOP), -1, dtype=np.int64)
    successors[:, 0] = lead
    shares = np.zeros((len(latest), TOP), dtype=np.float32)
    shares[:, 0] = 1.0
    TransitionPrior(100.0, np.array(latest, dtype=np.int64), successors, shares).save(model.transitions)
    name = f"{MODEL}_transitions_{retrieval}"
    config = dataclasses.replace(
        mat_config, registry=dataclasses.replace(mat_config.registry, model_name=name),
        database=dataclasses.replace(mat_config.database, reco_schema=f"{RECO}_transitions"),
        materialize=dataclasses.replace(mat_config.materialize, retrieval=retrieval, index_candidates=8,
                                        index_min_recall=0.0))
    register_candidate(config, model_dir=model.root, run_dir=tmp_path / "run",
                       evaluation={"candidate": {"valid": {"ndcg@10": 0.1}}}, decision={"passed": True, "reasons": ["t"]},
                       lineage={"run_key": name})
    materialize(config)
    lists = _read(engine, f'select user_id, item_id, rank from {RECO}_transitions."user_recommendations" '
                          'order by user_id, rank')
    for user in (1, 2, 3):  # their latest item is in the table: the lead item first
        assert lists[lists["user_id"] == user]["item_id"].iloc[0] == lead, user
    assert lead not in set(lists[lists["user_id"].isin([4, 5])]["item_id"])  # no usable history: popularity
