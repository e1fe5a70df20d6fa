"""Expectations on `items.parquet`: the catalogue whose text the language model reads."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from expectations.common import (
    INTEGER,
    NOT_BLANK_REGEX,
    TEXT,
    QualitySettings,
    columns_present,
    row_count,
    rule,
    tolerant,
)

TABLE = "items"
COLUMNS = {"item_id": INTEGER, "title": TEXT, "genres": TEXT, "year": INTEGER, "description": TEXT}
# Columns that identify a row when an offending value (a null, a blank) says nothing by itself.
IDENTIFYING_COLUMNS = ("item_id", "title")


def build_suite(quality: QualitySettings, previous_count: int | None = None) -> gx.ExpectationSuite:
    """Keys present and unique, text non-empty, and a catalogue of plausible size.

    Keys are blocking: a broken id cannot be joined or told apart, so it is fixed at the source.
    Blank text is a tolerated defect: up to `quality.max_rejected_share` of the catalogue may
    have it; those items are left out of the snapshot with their interactions (the language
    model would embed every blank item alike), and more stops the run.
    """
    expectations = [
        columns_present(COLUMNS, "prepare and the item tower"),
        row_count(TABLE, quality, quality.min_items, previous_count),
        gxe.ExpectColumnValuesToNotBeNull(
            column="item_id", **rule("an item without an id cannot be joined to interactions"),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="item_id",
            **rule("a duplicated id gives one item two texts and double-counts it in metrics"),
        ),
    ]
    share = quality.max_rejected_share
    for column in ("title", "description"):
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(
                column=column, **tolerant(f"the language model embeds the {column}; null leaves the item mute", share),
            ),
            gxe.ExpectColumnValuesToMatchRegex(
                column=column, regex=NOT_BLANK_REGEX,
                **tolerant(f"a blank {column} embeds like every other blank item (cold-start collapse)", share),
            ),
        ]
    return gx.ExpectationSuite(name=TABLE, expectations=expectations)
