"""Sample explained recommendations of a trained model, for people to read in MLflow (pure: frames in).

A few users' top lists with the interest behind each pick and its explanation, and how the
picks of a larger sample share out between the interests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def user_histories(interactions: pd.DataFrame, users: int) -> tuple[np.ndarray, list[list[int]]]:
    """The first `users` user ids (in id order) and their item histories, oldest first."""
    ordered = interactions.sort_values(["user_id", "occurred_at", "item_id"], kind="stable")
    chosen = np.sort(ordered["user_id"].unique())[:users]
    grouped = ordered[ordered["user_id"].isin(chosen)].groupby("user_id")["item_id"].agg(list)
    return chosen, [list(map(int, grouped[u])) for u in chosen]


def sample_recommendations(model_dir: Path, interactions: pd.DataFrame, *, users: int = 10, top_k: int = 10,
                           share_users: int = 200) -> tuple[pd.DataFrame, dict[str, float]]:
    """(`users` users' top-`top_k` with titles and explanations, each interest's share of the picks of
    the first `share_users` users' top-`top_k`)."""
    from tasks.model.recommender import Recommender

    recommender = Recommender.load(model_dir)
    user_ids, histories = user_histories(interactions, max(users, share_users))
    recs = recommender.recommend(histories, top_k)
    titles = dict(zip(recommender.item_ids.tolist(), recommender.titles[1:].tolist(), strict=True))
    shown = min(users, len(user_ids))
    frame = pd.DataFrame({
        "user_id": np.repeat(user_ids[:shown], top_k),
        "rank": np.tile(np.arange(1, top_k + 1), shown),
        "item_id": recs.item_ids[:shown].reshape(-1),
        "score": np.round(recs.scores[:shown].reshape(-1).astype(float), 3),
        "interest_id": recs.interest_ids[:shown].reshape(-1),
        "explanation": recs.explanations[:shown].reshape(-1),
    })
    frame = frame[frame["item_id"] >= 0]
    frame.insert(3, "title", frame["item_id"].map(titles))
    picked = recs.interest_ids[recs.item_ids >= 0]
    shares = {}
    for interest in sorted(set(picked.tolist())):
        label = "popularity fallback" if interest < 0 else f"interest {interest} ({'recent' if interest == 0 else 'long-term'})"
        shares[label] = float((picked == interest).mean())
    return frame.reset_index(drop=True), shares
