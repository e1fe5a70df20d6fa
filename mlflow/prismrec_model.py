"""MLflow pyfunc definition of a PrismRec model (logged as models-from-code).

Input: a DataFrame with `user_id` and `history` (the user's app item ids, oldest first).
Output: one row per recommendation: user_id, rank (1 = best), item_id, score, interest_id,
explanation, is_new_item. Params: `top_k` (default 50), `interest_balance` (how evenly the list is
shared out between the user's interests, ComiRec's controllable aggregation in logits; 0 = each item
under its best interest only; negative or absent = the model's own, train.interest_balance) and
`max_new_items` (new items, placed by their text, a list may take; negative = no cap; absent =
the published tables' default, materialize.max_new_items).
A request is scored a batch of users at a time, each batch's scores [users, interests, items] within
materialize.score_memory_mb, so that a large request cannot take the server's memory. Both defaults are the
serving process's own settings: PRISMREC_MATERIALIZE__SCORE_MEMORY_MB and PRISMREC_MATERIALIZE__MAX_NEW_ITEMS
in its environment, else the pipeline's defaults.
The artifact `model_dir` is a model folder written by `tasks.training.worker` (tasks.layout.ModelFiles:
the checkpoint and the item table are what scoring reads).
"""

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

import mlflow


class PrismRecPyfunc(PythonModel):
    score_memory_mb: float | None = None  # None: materialize.score_memory_mb of the serving environment

    def load_context(self, context):
        from tasks.model.recommender import Recommender

        self.read_settings()
        self.recommender = Recommender.load(context.artifacts["model_dir"], self.precision)

    def read_settings(self) -> None:
        """The serving process's materialize settings (its environment, else the defaults), read once at
        load: a bad value stops the server from starting, with the setting named, instead of failing
        every request."""
        from tasks.config import load_config

        config = load_config()
        self.materialize, self.precision = config.materialize, config.train.precision

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params, defaults = params or {}, self.materialize
        top_k = int(params.get("top_k", 50))
        balance = float(params.get("interest_balance", -1.0))
        cap = int(params["max_new_items"]) if "max_new_items" in params else defaults.max_new_items
        histories = [list(h) if h is not None else [] for h in model_input["history"]]
        user_ids = model_input["user_id"].to_numpy()
        budget = self.score_memory_mb if self.score_memory_mb is not None else defaults.score_memory_mb
        step = self.recommender.users_per_batch(budget, most=max(len(histories), 1))
        frames = [self._listed(user_ids[start:start + step], histories[start:start + step], top_k,
                               balance if balance >= 0 else None, cap if cap is None or cap >= 0 else None)
                  for start in range(0, max(len(histories), 1), step)]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    def _listed(self, user_ids: np.ndarray, histories: list, top_k: int, balance: float | None,
                cap: int | None) -> pd.DataFrame:
        """One batch's lists, a row per recommendation."""
        result = self.recommender.recommend(histories, top_k, interest_balance=balance, max_new_items=cap)
        users, k = result.item_ids.shape
        frame = pd.DataFrame({
            "user_id": np.repeat(user_ids, k),
            "rank": np.tile(np.arange(1, k + 1), users),
            "item_id": result.item_ids.reshape(-1),
            "score": result.scores.reshape(-1),
            "interest_id": result.interest_ids.reshape(-1),
            "explanation": result.explanations.reshape(-1),
            "is_new_item": result.is_new.reshape(-1),
        })
        return frame[frame["item_id"] >= 0].reset_index(drop=True)


mlflow.models.set_model(PrismRecPyfunc())
