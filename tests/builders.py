"""Hand-made inputs shared by tests: small split sequences, item tables, a registrable toy model, and the
environment that lets a test's subprocesses share the run's text-state cache."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from tasks.data.prepare import Sequences


def make_sequences(sequences: list[list[int]], n_items: int) -> Sequences:
    """Sequences of item indices (1..n_items) per user; item i has app id 100 + i."""
    lengths = [len(s) for s in sequences]
    return Sequences(
        user_ids=np.arange(len(sequences), dtype=np.int64),
        indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        item_idx=np.concatenate(sequences).astype(np.int64),
        item_ids=np.concatenate([[-1], 100 + np.arange(1, n_items + 1)]).astype(np.int64),
    )


def make_items(texts: list[str]) -> pd.DataFrame:
    """An item table in the dataset's shape, the texts as titles and descriptions; item i has app id 100 + i."""
    n = len(texts)
    return pd.DataFrame({"idx": np.arange(1, n + 1), "item_id": 100 + np.arange(1, n + 1),
                         "title": texts, "genres": "", "description": texts})


# A pyfunc model that predicts an empty list: enough to register versions and move aliases.
EMPTY_MODEL_CODE = '''
import mlflow
import pandas as pd


class Toy(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.DataFrame(columns=["user_id", "rank", "item_id", "score", "interest_id", "explanation"])


mlflow.models.set_model(Toy())
'''


def shared_cache_env() -> dict[str, str]:
    """The test run's shared `paths.cache` (tests/conftest.py, shared_cache) for a subprocess environment
    built without PRISMREC_* variables: its trainings read the frozen MiniLM states the run has computed."""
    cache = os.environ.get("PRISMREC_PATHS__CACHE")
    return {"PRISMREC_PATHS__CACHE": cache} if cache else {}
