"""Item titles as people say them: the item text the language model reads and the lists people see."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_TRAILING_ARTICLE = re.compile(r"^(?P<head>.+?), (?P<article>The|A|An|L'|La|Le|Les|Il|El|Das|Der|Die)(?P<tail> \(.*\))?$")


def natural_title(title: str) -> str:
    """'Usual Suspects, The' -> 'The Usual Suspects' (the language model reads prose, not an index)."""
    match = _TRAILING_ARTICLE.match(title)
    if not match:
        return title
    article = match["article"]
    joiner = "" if article.endswith("'") else " "
    return f"{article}{joiner}{match['head']}{match['tail'] or ''}"


def display_titles(titles) -> np.ndarray:
    """Titles as people say them, for lists, explanations and labels: MovieLens' "Lion King, The" ->
    "The Lion King" (the same rule that writes the item texts the language model reads)."""
    return pd.Series(titles).fillna("").astype(str).map(natural_title).to_numpy(dtype=object)
