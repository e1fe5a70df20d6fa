"""bench.scoring: one size measured for real (a tiny catalogue), the table, and bad arguments."""

import pytest

from bench import scoring


def test_one_size_scores_every_user_and_reports_its_batch_and_memory():
    row = scoring.measure(n_items=60, n_users=40)
    assert row["items"] == 60 and row["users"] == 40 and row["batch_users"] == 1024
    assert row["users_per_second"] > 0 and row["interests"] >= 1
    assert 0 < row["model_mib"] <= row["scoring_peak_mib"] <= row["peak_mib"]
    assert row["index"]["users_per_second"] > 0 and row["index"]["lists"] == 60 // 39  # a cell per 39 items at least


def test_the_table_has_a_row_per_size():
    result = {"machine": {"cpu": "AMD EPYC", "cores": 2, "torch": "2.13.0+cpu", "torch_threads": 2},
              "date": "2026-12-04T21:00:00+00:00",
              "sizes": [{"items": 37060, "users": 3072, "batch_users": 905, "users_per_second": 444.9,
                         "model_mib": 526, "scoring_peak_mib": 1140, "similar_items_seconds": 9.1, "peak_mib": 1168}]}
    table = scoring.markdown(result)
    assert "| 37,060 | 3,072 | 905 | 445 | — | — | 526 | 1,140 | 9.1 | 1,168 |" in table  # measured before the index
    result["sizes"][0]["index"] = {"lists": 770, "probes": 32, "candidates": 200, "build_seconds": 0.8,
                                   "users_per_second": 1234.5}
    assert "| 37,060 | 3,072 | 905 | 445 | 1,234 | 770 / 32 (0.8) | 526 | 1,140 | 9.1 | 1,168 |" in scoring.markdown(result)


@pytest.mark.parametrize("args, message", [(["--items", "many"], "want comma-separated item counts"),
                                           (["--items", "1"], "--items must be at least 2")])
def test_bad_arguments_say_what_is_wrong(args, message):
    with pytest.raises(SystemExit, match=message):
        scoring.main(args)
