"""Disentanglement figures for multi-interest users, and the cold-start item hold-out.

Pure functions over arrays, used by `bench.interests`:

- how alike a user's K interest vectors are (mean pairwise cosine; lower = more decoupled);
- how a user's top-k list is shared out between interests (distinct interests used, the
  dominant interest's share, normalised entropy);
- a cold-start split: a set of items keeps its text and its place in the catalogue but loses
  every training interaction, so only the text can carry it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from tasks.data.prepare import Sequences

log = logging.getLogger(__name__)


def pairwise_interest_cosine(interests: torch.Tensor | np.ndarray, centre: torch.Tensor | None = None) -> np.ndarray:
    """[U, K, d] interest vectors -> [U] mean cosine over each user's K(K-1)/2 interest pairs.

    1 means the K interests point the same way (collapsed), 0 orthogonal. Needs K >= 2.
    `centre` (e.g. the mean item vector) is subtracted first: a direction every item shares
    shifts all of an interest's cosine scores alike, so only what is left ranks items.
    """
    vectors = torch.as_tensor(np.asarray(interests) if not torch.is_tensor(interests) else interests).float()
    if vectors.ndim != 3 or vectors.shape[1] < 2:
        raise ValueError(f"need interests shaped [users, K >= 2, dim], got {tuple(vectors.shape)}")
    if centre is not None:
        vectors = vectors - torch.as_tensor(centre).float()
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    cosine = unit @ unit.transpose(1, 2)  # [U, K, K]
    k = cosine.shape[1]
    upper = torch.triu_indices(k, k, offset=1)
    return cosine[:, upper[0], upper[1]].mean(1).numpy()


def interest_specific_share(interests: torch.Tensor | np.ndarray) -> np.ndarray:
    """[U, K, d] -> [U] share of the interests' energy that is not common to all K of them:
    sum_k |x_k - mean_k x|^2 / sum_k |x_k|^2. 0: identical interests; (K-1)/K: orthogonal, equal
    norms. Complements the cosine when a large shared component makes every cosine near 1.
    """
    vectors = torch.as_tensor(np.asarray(interests) if not torch.is_tensor(interests) else interests).float()
    if vectors.ndim != 3:
        raise ValueError(f"need interests shaped [users, K, dim], got {tuple(vectors.shape)}")
    specific = (vectors - vectors.mean(1, keepdim=True)).pow(2).sum((1, 2))
    return (specific / vectors.pow(2).sum((1, 2)).clamp(min=1e-12)).numpy()


def interest_counts(interest_ids: np.ndarray, n_interests: int) -> np.ndarray:
    """[U, k] interest of each recommended item (-1: not from an interest) -> [U, K] counts."""
    ids = np.asarray(interest_ids, dtype=np.int64)
    if ids.size and ids.max() >= n_interests:
        raise ValueError(f"interest id {ids.max()} out of range for {n_interests} interests")
    counts = np.zeros((ids.shape[0], n_interests), dtype=np.int64)
    rows, cols = np.nonzero(ids >= 0)
    np.add.at(counts, (rows, ids[rows, cols]), 1)
    return counts


def interest_usage(interest_ids: np.ndarray, n_interests: int) -> dict[str, float | list[float]]:
    """How each user's top-k list is shared out between their interests, averaged over users.

    - mean_distinct_interests: interests that produced at least one item (1..K);
    - mean_dominant_share: share of the list from the user's most productive interest (1/K..1);
    - mean_normalised_entropy: entropy of the shares divided by log K (0: one interest, 1: even);
    - share_by_rank: mean share of the most, second-most, ... productive interest;
    - share_by_interest: share of all interest-backed picks that interest 0, 1, ... made;
    - single_interest_users: share of users whose whole list comes from one interest.
    Users with no interest-backed items (popularity fallback) are left out.
    """
    counts = interest_counts(interest_ids, n_interests)
    totals = counts.sum(1)
    counts = counts[totals > 0]
    if not len(counts):
        raise ValueError("no recommendation in interest_ids comes from an interest")
    shares = counts / counts.sum(1, keepdims=True)
    distinct = (counts > 0).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(shares > 0, shares * np.log(shares), 0.0).sum(1)
    normalised = entropy / np.log(n_interests) if n_interests > 1 else np.zeros_like(entropy)
    ranked = -np.sort(-shares, axis=1)
    return {
        "users": len(counts),
        "mean_distinct_interests": float(distinct.mean()),
        "mean_dominant_share": float(ranked[:, 0].mean()),
        "mean_normalised_entropy": float(normalised.mean()),
        "share_by_rank": [float(x) for x in ranked.mean(0)],
        "share_by_interest": [float(x) for x in counts.sum(0) / counts.sum()],
        "single_interest_users": float((distinct == 1).mean()),
    }


def hold_out_items(sequences: Sequences, fraction: float, seed: int) -> tuple[Sequences, np.ndarray, int]:
    """Cold-start split: pick `fraction` of the items (seeded) and remove them from every
    user's *training* part (all but the last two items); validation and test targets stay as
    they are, so a held-out item can still be the item a user watched next.

    Users left with an empty training part are dropped (leave-one-out needs a history).
    The item universe is unchanged: held-out items keep their index and text.
    Returns (new sequences, held-out item indices, interactions removed).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be between 0 and 1")
    rng = np.random.default_rng(seed)
    n_held = max(1, round(fraction * sequences.n_items))
    held = np.sort(rng.choice(np.arange(1, sequences.n_items + 1), size=n_held, replace=False))
    is_held = np.zeros(sequences.n_items + 1, dtype=bool)
    is_held[held] = True
    users, parts, removed = [], [], 0
    for u in range(sequences.n_users):
        sequence = sequences.sequence(u)
        train, tail = sequence[:-2], sequence[-2:]
        kept = train[~is_held[train]]
        removed += len(train) - len(kept)
        if len(kept):
            users.append(u)
            parts.append(np.concatenate([kept, tail]))
    lengths = np.array([len(p) for p in parts], dtype=np.int64)
    cold = Sequences(
        user_ids=sequences.user_ids[users].astype(np.int64),
        indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        item_idx=np.concatenate(parts).astype(np.int64),
        item_ids=sequences.item_ids.copy(),
    )
    log.info("held out %d of %d items: %d training interactions removed, %d users dropped",
             n_held, sequences.n_items, removed, sequences.n_users - cold.n_users)
    return cold, held, removed
