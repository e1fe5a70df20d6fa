"""Expectations on `items.parquet`: the catalogue whose text the language model reads."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from expectations.common import NOT_BLANK_REGEX, rule
from tasks.config import PipelineConfig

TABLE = "items"
REQUIRED_COLUMNS = ("item_id", "title", "genres", "year", "description")
# Columns that identify a row when an offending value (a null, a blank) says nothing by itself.
IDENTIFYING_COLUMNS = ("item_id", "title")


def build_suite(config: PipelineConfig) -> gx.ExpectationSuite:
    """Keys present and unique, text non-empty, and enough items to be a real catalogue."""
    expectations = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(REQUIRED_COLUMNS), exact_match=False,
            **rule("prepare and the item tower read these columns; extra columns are fine"),
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=config.quality.min_items,
            **rule("a catalogue this small means the extraction, not the business, went wrong"),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="item_id", **rule("an item without an id cannot be joined to interactions"),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="item_id",
            **rule("a duplicated id gives one item two texts and double-counts it in metrics"),
        ),
    ]
    for column in ("title", "description"):
        expectations += [
            gxe.ExpectColumnValuesToNotBeNull(
                column=column, **rule(f"the language model embeds the {column}; null leaves the item mute"),
            ),
            gxe.ExpectColumnValuesToMatchRegex(
                column=column, regex=NOT_BLANK_REGEX,
                **rule(f"a blank {column} embeds like every other blank item (cold-start collapse)"),
            ),
        ]
    return gx.ExpectationSuite(name=TABLE, expectations=expectations)
