"""An id row for an item training never saw, predicted from its text.

A trained item's vector is its projected text plus a learned id row; the id row carries what the
ratings taught (how widely the item is watched, which crowd watches it). A new item has no id row,
and its text-only vector lies off the trained items' manifold: scored as it is, it lands too high for
some users and too low for the rest. A ridge regression from the pooled text vectors of the trained
items to their id rows, fitted once after training, gives a new item the id row its text predicts;
with a strong penalty the prediction leans on the trained items' mean row (what an average item
learned) and moves from it only where the text clearly says more. Measured on a time split of ML-1M
(docs/experiments.md, "Cold start"): the new titles' median rank and the warm items' hit rate both
improve over text alone.
"""

from __future__ import annotations

import torch


def fit_id_from_text(text_vectors: torch.Tensor, id_rows: torch.Tensor, penalty: float) -> torch.Tensor:
    """Ridge weights [text_dim + 1, d] (the last row the intercept, not penalised) mapping the trained
    items' pooled text vectors [N, text_dim] to their id rows [N, d]; solved in float64."""
    if penalty < 0:
        raise ValueError(f"the ridge penalty must be >= 0, got {penalty}")
    if len(text_vectors) != len(id_rows) or not len(text_vectors):
        raise ValueError(f"need the same, non-zero number of text vectors and id rows, got "
                         f"{len(text_vectors)} and {len(id_rows)}")
    x = with_intercept(text_vectors.double())
    gram = x.T @ x
    diagonal = torch.full((x.shape[1],), float(penalty), dtype=torch.float64)
    diagonal[-1] = 0.0  # the intercept: the trained items' mean row, whatever the penalty
    # lstsq rather than solve: with no penalty and fewer items than text dimensions the system is singular.
    return torch.linalg.lstsq(gram + torch.diag(diagonal), x.T @ id_rows.double()).solution.float()


def predict_id_rows(text_vectors: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Id rows [M, d] for pooled text vectors [M, text_dim] (fit_id_from_text's weights)."""
    return with_intercept(text_vectors.to(weights.dtype)) @ weights


def with_intercept(vectors: torch.Tensor) -> torch.Tensor:
    return torch.cat([vectors, vectors.new_ones((len(vectors), 1))], dim=1)
