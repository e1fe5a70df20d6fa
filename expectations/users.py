"""Expectations on `users.parquet`: the people recommendations are made for."""

from __future__ import annotations

import great_expectations as gx
import great_expectations.expectations as gxe

from expectations.common import INTEGER, QualitySettings, columns_present, row_count, rule

TABLE = "users"
COLUMNS = {"user_id": INTEGER}
IDENTIFYING_COLUMNS = ("user_id",)


def build_suite(quality: QualitySettings, previous_count: int | None = None) -> gx.ExpectationSuite:
    """Keys present and unique, and a plausible number of users; all blocking."""
    return gx.ExpectationSuite(name=TABLE, expectations=[
        columns_present(COLUMNS, "interaction checks"),
        row_count(TABLE, quality, quality.min_users, previous_count),
        gxe.ExpectColumnValuesToNotBeNull(
            column="user_id", **rule("a user without an id can never receive recommendations"),
        ),
        gxe.ExpectColumnValuesToBeUnique(
            column="user_id", **rule("a duplicated user would be scored and published twice"),
        ),
    ])
