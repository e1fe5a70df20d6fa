"""Expectations on `users.parquet`: the people recommendations are made for."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from expectations.common import rule
from tasks.config import PipelineConfig

TABLE = "users"
REQUIRED_COLUMNS = ("user_id",)
IDENTIFYING_COLUMNS = ("user_id",)


def build_suite(config: PipelineConfig) -> gx.ExpectationSuite:
    """Keys present and unique, and enough users to train on."""
    return gx.ExpectationSuite(name=TABLE, expectations=[
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(REQUIRED_COLUMNS), exact_match=False,
            **rule("interactions are checked against user_id; extra columns are fine"),
        ),
        gxe.ExpectTableRowCountToBeBetween(
            min_value=config.quality.min_users,
            **rule("so few users means the extraction, not the business, went wrong"),
        ),
        gxe.ExpectColumnValuesToNotBeNull(
            column="user_id", **rule("a user without an id can never receive recommendations"),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="user_id", **rule("a duplicated user would be scored and published twice"),
        ),
    ])
