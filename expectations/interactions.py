"""Expectations on `interactions.parquet`: who rated what, when — the training signal."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import great_expectations as gx
import great_expectations.expectations as gxe

from expectations.common import rule, utc
from tasks.config import PipelineConfig

TABLE = "interactions"
REQUIRED_COLUMNS = ("user_id", "item_id", "rating", "occurred_at")
IDENTIFYING_COLUMNS = ("user_id", "item_id", "occurred_at")
# Star ratings on the MovieLens scale (half stars from 0.5 to 5).
RATING_RANGE = (0.5, 5.0)


def build_suite(
    config: PipelineConfig,
    logical_date: datetime,
    item_ids: Collection[int],
    user_ids: Collection[int],
) -> gx.ExpectationSuite:
    """Keys present, every user and item known to the snapshot, times inside the window.

    `item_ids` / `user_ids` are the ids of the same snapshot's items and users: the source
    has no foreign keys (replicas and views rarely do), so orphans are caught here.
    """
    earliest, latest = utc(config.quality.earliest_event), utc(logical_date)
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(REQUIRED_COLUMNS), exact_match=False,
            **rule("prepare orders histories by occurred_at and joins on both ids"),
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=config.quality.min_interactions,
            **rule("so few interactions means the extraction, not the users, went wrong"),
        ),
    ]
    for column in ("user_id", "item_id", "occurred_at"):
        expectations.append(gxe.ExpectColumnValuesToNotBeNull(
            column=column, **rule(f"an interaction without {column} cannot be placed in a history"),
        ))
    expectations += [
        gxe.ExpectColumnValuesToBeInSet(
            column="user_id", value_set=sorted(int(i) for i in user_ids),
            **rule("an interaction of an unknown user is an orphan (no foreign keys in the source)"),
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="item_id", value_set=sorted(int(i) for i in item_ids),
            **rule("an unknown item has no text to embed and cannot be recommended"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="occurred_at", min_value=earliest, max_value=latest,
            **rule("events after the logical date leak the future into training; "
                   "events before quality.earliest_event come from a broken clock"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="rating", min_value=RATING_RANGE[0], max_value=RATING_RANGE[1],
            **rule("ratings outside the star scale mean a unit or mapping error in the source"),
        ),
    ]
    return gx.ExpectationSuite(name=TABLE, expectations=expectations)
