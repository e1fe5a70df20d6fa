"""An epoch's record, its log line, the averaged-or-live choice, the stop decision and the run
summary (tasks.training.records): pure functions, checked on hand-made numbers."""

import pytest

from tasks.training.records import (
    BestSoFar,
    EpochStats,
    ValidationTotals,
    choose_weights,
    epoch_log_line,
    epoch_record,
    run_summary,
    stop_reason,
)

STATS = EpochStats(loss=6.5, interest_cosine=0.25, targets_won=[0.1, 0.6, 0.3], seconds=4.0)
LIVE = ValidationTotals(ndcg_sum=30.0, hr_sum=60.0, users=300.0)
AVERAGED = ValidationTotals(ndcg_sum=36.0, hr_sum=66.0, users=300.0)


def test_the_average_is_kept_unless_the_live_weights_validate_higher():
    assert choose_weights(LIVE, None) == "live"  # no averaging
    assert choose_weights(LIVE, AVERAGED) == "averaged"
    assert choose_weights(AVERAGED, LIVE) == "live"
    assert choose_weights(LIVE, LIVE) == "averaged"  # a tie keeps the average


def test_epoch_record_holds_the_chosen_weights_metrics_and_both_candidates():
    record = epoch_record(3, STATS, LIVE, AVERAGED, lr=1e-3, steps=20, seconds=10.0, peak_rss_mib=2345.678)
    assert record == {
        "epoch": 3, "train_loss": 6.5, "valid_ndcg@10": 0.12, "interest_cosine": 0.25, "lr": 1e-3,
        "valid_hr@10": 0.22, "seconds": 10.0, "weights": "averaged",
        "steps_per_second": 5.0, "validation_seconds": 6.0,
        "targets_won_interest_0": 0.1, "targets_won_interest_1": 0.6, "targets_won_interest_2": 0.3,
        "valid_ndcg@10_averaged": 0.12, "valid_ndcg@10_live": 0.1, "peak_rss_mib": 2345.7,
    }
    plain = epoch_record(1, STATS, LIVE, None, lr=2e-3, steps=20, seconds=10.0, peak_rss_mib=100.0)
    assert (plain["weights"], plain["valid_ndcg@10"], plain["valid_hr@10"]) == ("live", 0.1, 0.2)
    assert "valid_ndcg@10_averaged" not in plain and "valid_ndcg@10_live" not in plain


def test_epoch_log_line_names_the_candidates_the_best_and_the_peak_memory():
    record = epoch_record(3, STATS, LIVE, AVERAGED, lr=1e-3, steps=20, seconds=10.0, peak_rss_mib=2345.678)
    assert epoch_log_line(record, improved=True, total_seconds=95.2) == (
        "epoch 3: loss 6.5000, interest cosine 0.250, targets won by interest 0-2: 0.10 / 0.60 / 0.30, "
        "valid NDCG@10 0.1200 (averaged; averaged 0.1200, live 0.1000), HR@10 0.2200 (best, saved) "
        "(10.0s, total 95s, peak RSS 2,346 MiB)")
    plain = epoch_record(1, STATS, LIVE, None, lr=2e-3, steps=20, seconds=10.0, peak_rss_mib=100.0)
    line = epoch_log_line(plain, improved=False, total_seconds=10.0)
    assert "valid NDCG@10 0.1000, HR@10 0.2000 (10.0s" in line and "saved" not in line
    assert "GPU" not in line and "peak_gpu_mib" not in plain


def test_a_gpu_epoch_records_and_logs_the_device_memory_too():
    record = epoch_record(2, STATS, LIVE, None, lr=1e-3, steps=20, seconds=10.0, peak_rss_mib=2400.0,
                          peak_gpu_mib=1234.56)
    assert record["peak_gpu_mib"] == 1234.6
    assert epoch_log_line(record, improved=False, total_seconds=20.0).endswith(
        "(10.0s, total 20s, peak RSS 2,400 MiB, GPU 1,235 MiB)")


def test_best_so_far_counts_the_epochs_without_improvement():
    best = BestSoFar()
    assert [best.update(ndcg) for ndcg in (0.1, 0.2, 0.2, 0.15, 0.3)] == [True, True, False, False, True]
    assert (best.ndcg, best.stale) == (0.3, 0)
    best.update(0.29)
    assert best.stale == 1


def test_stop_reason_early_stopping_before_the_time_budget():
    assert stop_reason(epoch=3, stale=0, patience=5, planned=40, cap=40) is None
    assert stop_reason(epoch=8, stale=5, patience=5, planned=40, cap=40) == "early stopping"
    assert stop_reason(epoch=8, stale=5, patience=5, planned=8, cap=40) == "early stopping"
    assert stop_reason(epoch=8, stale=1, patience=5, planned=8, cap=40) == "time budget"
    # The last epoch of the cap ends the run as planned, not on the budget.
    assert stop_reason(epoch=40, stale=1, patience=5, planned=40, cap=40) is None


def test_run_summary_names_the_best_epoch_and_the_run_peak_memory():
    history = [epoch_record(epoch, STATS, LIVE, averaged, lr=1e-3, steps=20, seconds=10.0, peak_rss_mib=peak)
               for epoch, averaged, peak in ((1, None, 900.0), (2, AVERAGED, 1200.0), (3, LIVE, 1100.0))]
    summary = run_summary(history, 0.12, "early stopping", 31.5, world=2, full_steps=221)
    assert summary == {"best_valid_ndcg@10": 0.12, "epochs_run": 3, "best_epoch": 2, "best_weights": "averaged",
                       "stopped_by": "early stopping", "train_seconds": 31.5, "world_size": 2,
                       "full_steps_per_epoch": 221, "peak_rss_mib": 1200.0}
    assert history[2]["weights"] == "averaged" and history[2]["valid_ndcg@10"] == pytest.approx(0.1)
