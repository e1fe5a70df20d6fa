"""The pure parts of the MLflow run's story: metric names, the model card, the quality report page."""

from __future__ import annotations

from tasks.data.quality_html import render
from tasks.registry.model_card import model_card
from tasks.registry.run_metrics import candidate_metrics, comparison_metrics, epoch_metrics

EVALUATION = {
    "candidate": {"valid": {"ndcg@10": 0.13, "hr@10": 0.25}, "test": {"ndcg@10": 0.12, "hr@10": 0.22}},
    "baselines": {"ease": {"valid": {"ndcg@10": 0.09, "hr@10": 0.17}, "test": {"ndcg@10": 0.07, "hr@10": 0.15}}},
    "champion": {"valid": {"ndcg@10": 0.12, "hr@10": 0.24}, "test": {"ndcg@10": 0.11, "hr@10": 0.21}},
    "champion_version": "3",
    "slices": {"candidate": {"test": {"cold": {"users": 40, "ndcg@10": 0.05}}},
               "baselines": {"ease": {"test": {"cold": {"users": 40, "ndcg@10": 0.01}}}},
               "champion": {"test": {"cold": {"users": 40, "ndcg@10": 0.04}}}},
}


def test_compared_runs_share_the_candidates_metric_names():
    candidate = candidate_metrics(EVALUATION)
    assert candidate == {"valid_ndcg_10": 0.13, "valid_hr_10": 0.25, "test_ndcg_10": 0.12, "test_hr_10": 0.22,
                         "slice/test/cold/users": 40.0, "slice/test/cold/ndcg_10": 0.05}
    compared = comparison_metrics(EVALUATION)
    assert list(compared) == ["baseline: ease", "champion v3"]
    assert all(set(metrics) == set(candidate) for metrics in compared.values())
    assert compared["champion v3"]["slice/test/cold/ndcg_10"] == 0.04


def test_epoch_metrics_leave_out_the_step_and_words():
    assert epoch_metrics({"epoch": 2, "train_loss": 1.5, "valid_ndcg@10": 0.1, "weights": "live"}) == {
        "epoch/train_loss": 1.5, "epoch/valid_ndcg_10": 0.1}


def test_model_card_leads_with_the_headline_and_says_how_to_move_it():
    card = model_card(model_name="prismrec", version="4", evaluation=EVALUATION,
                      decision={"passed": False, "reasons": ["ndcg@10 0.1300 is below the champion's"]},
                      lineage={"data_as_of": "1998-04-22", "snapshot_rows_interactions": "99287"},
                      promoted=False, champion_before="3")
    first = card.splitlines()[0]
    assert "v4" in first and "test NDCG@10 0.1200" in first and "REFUSED" in first and "stays v3" in first
    assert "| ease (baseline) | 0.0900 | 0.0700 | 0.1500 | – |" in card
    assert "| champion v3 |" in card and "99,287 interactions" in card
    assert "prismrec promote 4" in card and "prismrec rollback" in card


def test_quality_report_page_lists_each_expectation():
    report = {"logical_date": "1998-04-22", "summary": {"passed": False, "evaluated": 2, "failed": 1,
                                                        "counts": {"items": 3},
                                                        "failures": [{"blocking": True, "message": "items: <bad>"}]},
              "validation_results": {"items": {"results": [
                  {"success": True, "expectation_config": {"type": "expect_column_to_exist", "kwargs": {"column": "title"}},
                   "result": {}},
                  {"success": False, "expectation_config": {"type": "expect_column_values_to_be_unique",
                                                            "kwargs": {"column": "item_id"}},
                   "result": {"unexpected_count": 1, "element_count": 3, "unexpected_percent": 33.3}}]}}}
    page = render(report)
    assert page.count("<tr>") == 2 + 2 + 2 + 3  # verdict, rows checked, failures, expectations (with headers)
    assert "expect_column_values_to_be_unique" in page and "&lt;bad&gt;" in page and 'class="fail"' in page
