"""What each epoch leaves behind, and the decisions taken on it: pure functions of numbers.

An epoch's training gives `EpochStats`, its validation `ValidationTotals` for the live weights
(and for their average, with train.ema_epochs); from these come the epoch's record in the
run's history (tasks.layout.ModelFiles.history), its log line, which weights the epoch keeps,
whether the run stops, and the run's summary (ModelFiles.summary).
"""

from __future__ import annotations

from dataclasses import dataclass

LIVE, AVERAGED = "live", "averaged"


@dataclass(frozen=True)
class EpochStats:
    """One epoch's training steps on this rank."""

    loss: float  # mean training loss per step
    interest_cosine: float  # mean pairwise cosine between the long-term interests
    targets_won: list[float]  # share of the training targets each interest scored highest
    seconds: float  # the training steps alone


@dataclass(frozen=True)
class ValidationTotals:
    """Sums over the validation users (over every rank's shard)."""

    ndcg_sum: float
    hr_sum: float
    users: float

    @property
    def ndcg(self) -> float:
        return self.ndcg_sum / self.users

    @property
    def hr(self) -> float:
        return self.hr_sum / self.users


def choose_weights(live: ValidationTotals, averaged: ValidationTotals | None) -> str:
    """The epoch's model: the weight average unless there is none or the live weights validate
    higher. The average lags while the model still improves fast and leads on a plateau."""
    return LIVE if averaged is None or live.ndcg_sum > averaged.ndcg_sum else AVERAGED


@dataclass
class BestSoFar:
    """The best validation NDCG@10 so far and the epochs since it (for early stopping)."""

    ndcg: float = -1.0
    stale: int = 0

    def update(self, ndcg: float) -> bool:
        """Count an epoch; True when it is the best so far."""
        if ndcg > self.ndcg:
            self.ndcg, self.stale = ndcg, 0
            return True
        self.stale += 1
        return False


def epoch_record(epoch: int, stats: EpochStats, live: ValidationTotals, averaged: ValidationTotals | None,
                 lr: float, steps: int, seconds: float, peak_rss_mib: float,
                 peak_gpu_mib: float | None = None) -> dict:
    """The epoch's entry in the run's history. `seconds` is the whole epoch (steps, refreshing the text
    vectors, validating); `lr` the rate its steps ran at; the peaks are the largest rank's resident
    memory and, on GPUs, device memory held by torch."""
    weights = choose_weights(live, averaged)
    chosen = live if weights == LIVE else averaged
    record = {"epoch": epoch, "train_loss": stats.loss, "valid_ndcg@10": chosen.ndcg,
              "interest_cosine": stats.interest_cosine, "lr": lr, "valid_hr@10": chosen.hr,
              "seconds": seconds, "weights": weights,
              "steps_per_second": steps / max(stats.seconds, 1e-9),
              "validation_seconds": seconds - stats.seconds}
    # An interest near 0 has stopped winning items, so the main loss no longer trains it.
    record |= {f"targets_won_interest_{k}": share for k, share in enumerate(stats.targets_won)}
    if averaged is not None:  # both candidates, to see what the averaging adds
        record["valid_ndcg@10_averaged"] = averaged.ndcg
        record["valid_ndcg@10_live"] = live.ndcg
    record["peak_rss_mib"] = round(peak_rss_mib, 1)
    if peak_gpu_mib is not None:
        record["peak_gpu_mib"] = round(peak_gpu_mib, 1)
    return record


def epoch_log_line(record: dict, improved: bool, total_seconds: float) -> str:
    """The epoch's summary line in the training log."""
    won = [value for key, value in record.items() if key.startswith("targets_won_interest_")]
    candidates = (f" ({record['weights']}; averaged {record['valid_ndcg@10_averaged']:.4f}, "
                  f"live {record['valid_ndcg@10_live']:.4f})" if "valid_ndcg@10_averaged" in record else "")
    return (f"epoch {record['epoch']}: loss {record['train_loss']:.4f}, interest cosine {record['interest_cosine']:.3f}, "
            f"targets won by interest 0-{len(won) - 1}: {' / '.join(f'{share:.2f}' for share in won)}, "
            f"valid NDCG@10 {record['valid_ndcg@10']:.4f}{candidates}, HR@10 {record['valid_hr@10']:.4f}"
            f"{' (best, saved)' if improved else ''} ({record['seconds']:.1f}s, total {total_seconds:.0f}s, "
            f"peak RSS {record['peak_rss_mib']:,.0f} MiB"
            + (f", GPU {record['peak_gpu_mib']:,.0f} MiB" if "peak_gpu_mib" in record else "") + ")")


def stop_reason(epoch: int, stale: int, patience: int, planned: int, cap: int) -> str | None:
    """Why the run ends after `epoch`, or None to go on: `stale` epochs without a better validation
    NDCG@10 reached `patience`, or the wall-clock plan (`planned` epochs, tasks.training.schedule.
    planned_epochs) leaves no room for another epoch before the cap."""
    if stale >= patience:
        return "early stopping"
    if planned <= epoch < cap:
        return "time budget"
    return None


def run_summary(history: list[dict], best_ndcg: float, stopped_by: str, seconds: float, world: int,
                full_steps: int) -> dict:
    """The run's summary: the best epoch, why the run stopped, its time, size and peak memory."""
    best = max(history, key=lambda record: record["valid_ndcg@10"])
    return {"best_valid_ndcg@10": best_ndcg, "epochs_run": len(history), "best_epoch": best["epoch"],
            "best_weights": best["weights"], "stopped_by": stopped_by, "train_seconds": seconds,
            "world_size": world, "full_steps_per_epoch": full_steps,
            "peak_rss_mib": max(record["peak_rss_mib"] for record in history)}
