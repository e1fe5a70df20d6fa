"""The cost curve's generator (bench.synthetic) has the shapes the benchmark relies on."""

import numpy as np
import pandas as pd

from bench.synthetic import END, START, ScaleSpec, interaction_chunks, items_frame, users_frame


def test_generator_has_long_tail_sessions_and_text():
    spec = ScaleSpec.of(20_000)
    chunks = list(interaction_chunks(spec, chunk_events=5_000))
    events = pd.concat(chunks, ignore_index=True)
    assert len(chunks) > 1 and len(events) == spec.events
    assert events["source_row"].tolist() == list(range(spec.events))
    # whole users per chunk: no user is split between two chunks
    assert sum(chunk["user_id"].nunique() for chunk in chunks) == events["user_id"].nunique() == spec.users
    assert set(events["item_id"]) <= set(range(1, spec.items + 1))

    # long tail: the top 10 % of items draw far more than 10 % of the events; events per user are skewed too
    counts = events["item_id"].value_counts().to_numpy()
    assert counts[: spec.items // 10].sum() / spec.events > 0.3
    per_user = events.groupby("user_id").size()
    assert per_user.min() >= spec.min_user_events and per_user.max() > 5 * per_user.median()

    # sessions: within a user, time goes forward with minutes-long gaps inside sessions and days between them
    assert events["occurred_at"].min() >= START and events["occurred_at"].max() < END
    gaps = events.groupby("user_id")["occurred_at"].diff().dropna().dt.total_seconds().to_numpy()
    assert (gaps > 0).all()
    assert np.median(gaps) < 600 and (gaps > 86_400).mean() > 0.05

    items, users = items_frame(spec), users_frame(spec)
    assert items["item_id"].tolist() == list(range(1, spec.items + 1)) and users["user_id"].is_unique
    for column in ("title", "genres", "description"):
        assert items[column].str.len().min() >= 3
    assert items["title"].nunique() > spec.items // 2


def test_sizes_grow_users_and_items_with_the_events():
    one, hundred = ScaleSpec.of(1_000_209), ScaleSpec.of(100_020_900)
    assert (one.users, hundred.users) == (10_002, 1_000_209)
    assert 3_600 < one.items < 3_800 and hundred.items == 100_000
