"""Synthetic source data in the `app` contract, at any size, for the cost curve (bench/scale.py).

The three tables `prismrec load` writes (items, users, interactions; tasks/data/sources.py),
with the shapes that make a recommender's cost grow: a long-tailed (Zipf-like) item popularity,
a long-tailed number of events per user, events grouped into sessions that follow each other in
time, and item text (title, genres, description) built from word lists, so the text tower has
real sentences to embed. Interactions come in chunks of whole users, so a caller can COPY 100M
rows without holding them at once. Pure numpy/pandas: no database here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

ML1M_EVENTS = 1_000_209
ML1M_RATED_ITEMS = 3_706
# The clock of the generated history: three years, as ML-1M spans.
START = datetime(2000, 1, 1, tzinfo=UTC)
END = datetime(2003, 1, 1, tzinfo=UTC)

GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western"]
ADJECTIVES = ["Silent", "Broken", "Golden", "Last", "Hidden", "Crimson", "Lonely", "Burning", "Frozen", "Wild",
              "Secret", "Distant", "Electric", "Midnight", "Savage", "Gentle", "Iron", "Lost", "Northern",
              "Restless", "Shattered", "Velvet", "Wicked", "Endless", "Bright"]
NOUNS = ["River", "Kingdom", "Detective", "Summer", "Machine", "Garden", "Stranger", "Empire", "Harbor",
         "Witness", "Journey", "Island", "Promise", "Shadow", "Frontier", "Orchestra", "Mirror", "Storm",
         "Letter", "Highway", "Circus", "Prophet", "Engine", "Lighthouse", "Valley"]
ROLES = ["a retired pilot", "two sisters", "a young doctor", "a small-town sheriff", "a jazz pianist",
         "a runaway robot", "an ambitious lawyer", "a family of farmers", "a disgraced chef", "a lonely astronaut",
         "a street magician", "an old soldier", "a teenage hacker", "a travelling salesman", "a ship's captain"]
ACTIONS = ["uncovers a conspiracy", "falls in love", "searches for a lost brother", "fights to save a home",
           "plans one last heist", "confronts a dark past", "races against time", "starts a band",
           "crosses the desert", "solves a murder", "escapes from prison", "builds a rocket"]
PLACES = ["in 1950s Chicago", "on a remote island", "in a crumbling castle", "across the Wild West",
          "in a city of the future", "on the edge of war", "in a quiet village", "aboard a night train",
          "beneath the ocean", "in the Scottish highlands"]
OCCUPATIONS = ["other", "academic/educator", "artist", "clerical/admin", "college/grad student",
               "customer service", "doctor/health care", "executive/managerial", "programmer", "retired",
               "sales/marketing", "scientist", "technician/engineer", "writer"]
# ML-1M's star distribution, roughly.
RATINGS, RATING_SHARES = np.array([1, 2, 3, 4, 5], dtype=np.float32), [0.06, 0.11, 0.26, 0.35, 0.22]


@dataclass(frozen=True)
class ScaleSpec:
    """How much to generate and how skewed it is."""

    events: int
    users: int
    items: int
    # Zipf exponent of item popularity: 0.8 gives a MovieLens-like head (the top 1 % of items draw
    # about a fifth of the events at 1x) over a long tail.
    popularity_exponent: float = 0.8
    # Spread (lognormal sigma) of events per user: most users have a few dozen, a few thousands.
    activity_sigma: float = 1.0
    # Every user has at least this many events, as MovieLens keeps only users with 20 ratings.
    min_user_events: int = 5
    # Mean number of events in a session; sessions are minutes long, days to weeks apart.
    mean_session_events: int = 8
    seed: int = 0

    @classmethod
    def of(cls, events: int, seed: int = 0) -> ScaleSpec:
        """The size for `events`: 100 events per user (1M users at 100M events), and the catalogue
        growing with the events as ML-1M's 3.7k rated items per 1M events, capped at 100k items."""
        users = max(20, events // 100)
        items = int(min(100_000, max(60, round(ML1M_RATED_ITEMS * events / ML1M_EVENTS))))
        return cls(events=events, users=users, items=items, seed=seed)


def item_popularity(spec: ScaleSpec) -> np.ndarray:
    """The probability of each item id 1..items (index 0 is item 1): Zipf over a random order."""
    rng = np.random.default_rng(spec.seed)
    weights = 1.0 / np.arange(1, spec.items + 1) ** spec.popularity_exponent
    return rng.permutation(weights / weights.sum())


def user_event_counts(spec: ScaleSpec) -> np.ndarray:
    """Events per user 1..users, summing to exactly spec.events."""
    rng = np.random.default_rng(spec.seed + 1)
    spare = spec.events - spec.min_user_events * spec.users
    if spare < 0:
        raise ValueError(f"{spec.events} events cannot give {spec.users} users {spec.min_user_events} each")
    weights = rng.lognormal(0.0, spec.activity_sigma, spec.users)
    counts = spec.min_user_events + np.floor(weights / weights.sum() * spare).astype(np.int64)
    short = spec.events - int(counts.sum())
    counts[rng.choice(spec.users, short, replace=False)] += 1
    return counts


def items_frame(spec: ScaleSpec) -> pd.DataFrame:
    """The catalogue: ids 1..items with a title, 1-3 genres, a year and a one-sentence description."""
    rng = np.random.default_rng(spec.seed + 2)
    n = spec.items
    pick = lambda words: np.asarray(words, dtype=object)[rng.integers(0, len(words), n)]
    titles = "The " + pick(ADJECTIVES) + " " + pick(NOUNS)
    # A sequel number keeps titles mostly distinct once the catalogue outgrows the word lists.
    sequel = rng.integers(0, max(2, n // (len(ADJECTIVES) * len(NOUNS))), n)
    titles = np.where(sequel > 0, titles + " " + (sequel + 1).astype(str).astype(object), titles)
    n_genres = rng.integers(1, 4, n)
    genre_picks = [rng.choice(len(GENRES), k, replace=False) for k in n_genres]
    genres = np.array(["|".join(GENRES[g] for g in sorted(p)) for p in genre_picks], dtype=object)
    first_genre = np.array([GENRES[p[0]].lower() for p in genre_picks], dtype=object)
    descriptions = ("In this " + first_genre + " story, " + pick(ROLES) + " " + pick(ACTIONS) + " "
                    + pick(PLACES) + ".")
    return pd.DataFrame({
        "item_id": np.arange(1, n + 1, dtype=np.int64), "title": titles, "genres": genres,
        "year": rng.integers(1930, 2003, n).astype(np.int64), "description": descriptions,
        "source_key": "synthetic:" + np.arange(1, n + 1).astype(str).astype(object),
    })


def users_frame(spec: ScaleSpec) -> pd.DataFrame:
    """Users 1..users with ML-1M's demographic columns."""
    rng = np.random.default_rng(spec.seed + 3)
    n = spec.users
    return pd.DataFrame({
        "user_id": np.arange(1, n + 1, dtype=np.int64),
        "age": np.array([1, 18, 25, 35, 45, 50, 56])[rng.integers(0, 7, n)].astype(np.int64),
        "gender": np.array(["F", "M"], dtype=object)[rng.integers(0, 2, n)],
        "occupation": np.asarray(OCCUPATIONS, dtype=object)[rng.integers(0, len(OCCUPATIONS), n)],
        "zip_code": np.char.zfill(rng.integers(0, 100_000, n).astype(str), 5).astype(object),
    })


def interaction_chunks(spec: ScaleSpec, chunk_events: int = 2_000_000) -> Iterator[pd.DataFrame]:
    """The events, whole users at a time (about `chunk_events` rows per chunk), in the contract's
    columns plus source_row. Each user's events fall into sessions: a run of events seconds to
    minutes apart, sessions spread over the part of the three years the user is active in."""
    popularity_cdf = np.cumsum(item_popularity(spec))
    counts = user_event_counts(spec)
    span_us = int((END - START).total_seconds() * 1e6)
    start_us = int(START.timestamp() * 1e6)
    rng = np.random.default_rng(spec.seed + 4)
    bounds = np.searchsorted(np.cumsum(counts), np.arange(chunk_events, spec.events, chunk_events))
    first_row = 0
    for users in np.split(np.arange(spec.users), np.unique(bounds[bounds < spec.users - 1]) + 1):
        c = counts[users]
        n = int(c.sum())
        user_of_event = np.repeat(users, c)
        position = np.arange(n) - np.repeat(np.cumsum(c) - c, c)  # index of the event within its user
        session_len = rng.integers(max(1, spec.mean_session_events // 2), spec.mean_session_events * 3 // 2 + 1,
                                   len(users))
        n_sessions = (c + session_len - 1) // session_len
        # The user arrives somewhere in the first 80 % of the span; sessions are spread after that.
        arrival = rng.integers(0, int(span_us * 0.8), len(users))
        gap = (span_us - arrival) // (n_sessions + 1) * rng.uniform(0.2, 1.0, len(users))
        session_of_event = position // np.repeat(session_len, c)
        within = position % np.repeat(session_len, c)
        occurred = (start_us + np.repeat(arrival, c) + (session_of_event * np.repeat(gap, c)).astype(np.int64)
                    + within * 180_000_000 + rng.integers(0, 60_000_000, n))  # ~3 minutes apart, in order
        items = np.searchsorted(popularity_cdf, rng.random(n) * popularity_cdf[-1], side="right") + 1
        yield pd.DataFrame({
            "user_id": user_of_event.astype(np.int64) + 1,
            "item_id": np.minimum(items, spec.items).astype(np.int64),
            "rating": rng.choice(RATINGS, n, p=RATING_SHARES),
            "occurred_at": pd.to_datetime(occurred, unit="us", utc=True),
            "source_row": np.arange(first_row, first_row + n, dtype=np.int64),
        })
        first_row += n
