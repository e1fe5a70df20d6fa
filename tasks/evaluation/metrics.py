"""Full-ranking metrics of the LOO-full protocol, as pure functions.

A target's rank is the number of items scored strictly above it, plus the tied items with a
lower index (the same deterministic tie-break `topk` uses), after masking the user's history.
Ranks are 0-based: rank 0 is a hit at position 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

# Every metric name the evaluation reports, the gate reads and MLflow, the report and the
# benchmarks show is built here. HR and NDCG are reported at each cut-off; MRR and catalogue
# coverage over the top-TOP_K lists, whose NDCG is the selection metric.
CUTOFFS = (10, 20)
TOP_K = 10
RANKING_METRICS = (*(f"{kind}@{k}" for k in CUTOFFS for kind in ("hr", "ndcg")), f"mrr@{TOP_K}")
COVERAGE = f"coverage@{TOP_K}"
METRIC_NAMES = (*RANKING_METRICS, COVERAGE)
SELECTION_METRIC = f"ndcg@{TOP_K}"  # selects epochs and hyper-parameters, and gates, on validation


def hit_rate(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks < k)) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Leave-one-out NDCG: one relevant item, so IDCG = 1 and DCG = 1 / log2(rank + 2)."""
    if not len(ranks):
        return 0.0
    gains = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
    return float(np.mean(gains))


def mrr(ranks: np.ndarray, k: int) -> float:
    if not len(ranks):
        return 0.0
    return float(np.mean(np.where(ranks < k, 1.0 / (ranks + 1.0), 0.0)))


def coverage(top_lists: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in at least one user's list."""
    return len(np.unique(top_lists)) / n_items if n_items else 0.0


def ranking_metrics(ranks: np.ndarray) -> dict[str, float]:
    """RANKING_METRICS from 0-based target ranks, for all users or any subset (a slice)."""
    metrics: dict[str, float] = {}
    for k in CUTOFFS:
        metrics[f"hr@{k}"] = hit_rate(ranks, k)
        metrics[f"ndcg@{k}"] = ndcg(ranks, k)
    metrics[f"mrr@{TOP_K}"] = mrr(ranks, TOP_K)
    return metrics


def summarize(ranks: np.ndarray, top_lists: np.ndarray, n_items: int) -> dict[str, float]:
    """All protocol metrics (METRIC_NAMES) from target ranks and each user's top-TOP_K list."""
    return ranking_metrics(ranks) | {COVERAGE: coverage(top_lists, n_items)}


def mask_history(scores: torch.Tensor, histories: Sequence[np.ndarray], targets: torch.Tensor) -> torch.Tensor:
    """Set the scores of each user's history items to -inf, never the target's; column 0 (padding) too."""
    rows = np.concatenate([np.full(len(h), i) for i, h in enumerate(histories)]) if histories else np.array([])
    cols = np.concatenate(histories) if histories else np.array([])
    scores = scores.clone()
    target_scores = scores.gather(1, targets[:, None])
    if len(rows):
        scores[torch.as_tensor(rows, dtype=torch.long, device=scores.device),
               torch.as_tensor(cols, dtype=torch.long, device=scores.device)] = float("-inf")
    scores.scatter_(1, targets[:, None], target_scores)
    scores[:, 0] = float("-inf")
    return scores


def rank_targets(scores: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """0-based rank of each target among all items, and each row's top-TOP_K item indices."""
    target_scores = scores.gather(1, targets[:, None])
    index = torch.arange(scores.shape[1], device=scores.device)[None]
    above = (scores > target_scores) | ((scores == target_scores) & (index < targets[:, None]))
    top_lists = scores.topk(min(TOP_K, scores.shape[1]), dim=1).indices
    return above.sum(1).cpu().numpy(), top_lists.cpu().numpy()


def rank_batches(score_batches: Iterable[tuple[torch.Tensor, Sequence[np.ndarray], np.ndarray]]
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per-user target ranks [U] and top-TOP_K lists [U, TOP_K] over batches of (scores, histories, targets).

    The per-user view lets callers summarise any subset of users (slices) without re-scoring.
    """
    all_ranks, all_top = [], []
    for scores, histories, targets in score_batches:
        target_tensor = torch.as_tensor(targets, dtype=torch.long)
        masked = mask_history(scores.float(), histories, target_tensor)
        ranks, top10 = rank_targets(masked, target_tensor)
        all_ranks.append(ranks)
        all_top.append(top10)
    if not all_ranks:
        return np.zeros(0, dtype=np.int64), np.zeros((0, TOP_K), dtype=np.int64)
    return np.concatenate(all_ranks), np.concatenate(all_top)


def evaluate_scores(score_batches: Iterable[tuple[torch.Tensor, Sequence[np.ndarray], np.ndarray]],
                    n_items: int) -> dict[str, float]:
    """Metrics over batches of (scores [B, N+1], histories to mask, targets [B])."""
    ranks, top10 = rank_batches(score_batches)
    if not len(ranks):
        return dict.fromkeys(METRIC_NAMES, 0.0)
    return summarize(ranks, top10, n_items)
