"""Expectations on `interactions.parquet`: who rated what, when — the training signal.

Blocking: structure, null keys, volume, freshness. Tolerant (GX `mostly`): orphans,
off-scale ratings, events outside the window and exact duplicates — their rows are left
out of the snapshot, and the run fails only when their share passes the threshold.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta

import great_expectations as gx
import great_expectations.expectations as gxe

from expectations.common import (
    FLOAT,
    INTEGER,
    TIMESTAMP,
    QualitySettings,
    columns_present,
    row_count,
    rule,
    tolerant,
    utc,
)

TABLE = "interactions"
COLUMNS = {"user_id": INTEGER, "item_id": INTEGER, "rating": FLOAT, "occurred_at": TIMESTAMP}
IDENTIFYING_COLUMNS = ("user_id", "item_id", "occurred_at")
# An event is a duplicate when the same user rated the same item at the same moment.
EVENT_KEY = ["user_id", "item_id", "occurred_at"]
# Star ratings on the MovieLens scale (half stars from 0.5 to 5).
RATING_RANGE = (0.5, 5.0)


def build_suite(
    quality: QualitySettings,
    logical_date: datetime,
    item_ids: Collection[int],
    user_ids: Collection[int],
    previous_count: int | None = None,
) -> gx.ExpectationSuite:
    """Keys present, every user and item known to the snapshot, times inside the window, fresh.

    `item_ids` / `user_ids` are the ids of the same snapshot's items and users: the source
    has no foreign keys (replicas and views rarely do), so orphans are caught here.
    `previous_count` is the last successful snapshot's row count (None on a first run).
    """
    earliest, latest = utc(quality.earliest_event), utc(logical_date)
    share = quality.max_rejected_share
    expectations = [
        columns_present(COLUMNS, "prepare (histories ordered by occurred_at, joined on both ids)"),
        row_count(TABLE, quality, quality.min_interactions, previous_count),
    ]
    for column in EVENT_KEY:
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(
            column=column, **rule(f"an interaction without {column} cannot be placed in a history"),
        ))
    if quality.max_event_age_days is not None:
        expectations.append(gxe.ExpectColumnMaxToBeBetween(
            column="occurred_at", min_value=latest - timedelta(days=quality.max_event_age_days),
            **rule(f"no event in the {quality.max_event_age_days} days before the logical date "
                   "means a stale replica or a stuck ingestion, not quiet users"),
        ))
    expectations += [
        gxe.ExpectColumnValuesToBeInSet(
            column="user_id", value_set=sorted(int(i) for i in user_ids),
            **tolerant("an interaction of an unknown user is an orphan (no foreign keys in the source)", share),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="item_id", value_set=sorted(int(i) for i in item_ids),
            **tolerant("an unknown item has no text to embed and cannot be recommended", share),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="occurred_at", min_value=earliest, max_value=latest,
            **tolerant("events after the logical date leak the future into training; "
                       "events before quality.earliest_event come from a broken clock", share),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="rating", min_value=RATING_RANGE[0], max_value=RATING_RANGE[1],
            **tolerant("ratings outside the star scale mean a unit or mapping error in the source", share),
        ),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=EVENT_KEY,
            **tolerant("the same (user, item, time) twice is a replayed write; it would double-count "
                       "the event (the first copy is kept)", quality.max_duplicate_share),
        ),
    ]
    return gx.ExpectationSuite(name=TABLE, expectations=expectations)
