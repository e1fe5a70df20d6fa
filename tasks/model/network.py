"""PrismRecNet: item vectors from text (+ id for warm items), interests from histories.

Item vector e_i = LayerNorm(W · text_i) + id_i. The text part comes from the fine-tuned top
layers of MiniLM; during training the pooled text vectors of all items live in a cache that
is refreshed with gradient for the items a step touches, and fully at each epoch start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from tasks.config import TrainConfig
from tasks.errors import RegistryError
from tasks.model.interests import InterestExtractor
from tasks.model.layers import in_row_buckets
from tasks.model.text_tower import TEXT_DIM, TextTower

LOGIT_SCALE = 20.0


# A PrismRec model's scores of every item under every interest, [users, interests, items + 1] in
# float32, are computed for at most this many MB of users at a time in the gate's scoring and in
# training's validation (materialize.score_memory_mb bounds publishing): a larger catalogue costs
# time, not memory.
SCORE_MEMORY_MB = 512


def rows_within(memory_mb: float, floats_per_row: int, most: int) -> int:
    """Rows of `floats_per_row` float32 values (a user's [interests, items + 1] scores, an item's cosine
    row) that fit in memory_mb: at least 1, at most `most`."""
    return max(1, min(most, int(memory_mb * 2**20 // (4 * max(floats_per_row, 1)))))


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network; saved inside every checkpoint."""

    n_items: int
    max_history: int
    dim: int
    n_interests: int
    user_layers: int
    user_heads: int
    dropout: float
    lm_trainable_layers: int
    max_text_tokens: int
    use_id_embedding: bool
    # Cosine scores are multiplied by this (a softmax temperature of 1 / logit_scale).
    logit_scale: float = LOGIT_SCALE
    # Inference only: ComiRec's controllable aggregation (tasks.model.recommender.balance_interests);
    # 0 ranks every item by its best interest alone.
    interest_balance: float = 0.0
    # The user transformer's feed-forward width, as a multiple of dim (older checkpoints: 2).
    user_ffn: int = 2

    @classmethod
    def from_config(cls, train: TrainConfig, n_items: int, max_history: int) -> ModelSpec:
        """The network that the training settings describe, for a catalogue of n_items."""
        return cls(n_items=n_items, max_history=max_history, dim=train.dim, n_interests=train.n_interests,
                   user_layers=train.user_layers, user_heads=train.user_heads, dropout=train.dropout,
                   lm_trainable_layers=train.lm_trainable_layers, max_text_tokens=train.max_text_tokens,
                   use_id_embedding=train.use_id_embedding, logit_scale=train.logit_scale,
                   interest_balance=train.interest_balance, user_ffn=train.user_ffn)

    @classmethod
    def from_dict(cls, saved: dict) -> ModelSpec:
        """The spec a checkpoint holds. Older checkpoints may carry options the network no longer
        has: they load when the option held the value that the network now always computes with,
        or shaped training alone; otherwise the model cannot be rebuilt, and RegistryError says so."""
        known = {f.name for f in fields(cls)}
        for name in sorted(set(saved) - known):
            if name in TRAINING_ONLY_OPTIONS:
                continue
            if name not in REMOVED_OPTIONS:
                raise RegistryError(f"the checkpoint's model spec has an unknown field {name!r}; it was written "
                                    "by another version of PrismRec: load it with that version or retrain")
            if saved[name] != REMOVED_OPTIONS[name]:
                raise RegistryError(
                    f"the checkpoint was trained with {name}={saved[name]!r}, an option PrismRec no longer has "
                    f"(only {name}={REMOVED_OPTIONS[name]!r} remains): retrain the model with current settings")
        return cls(**{name: value for name, value in saved.items() if name in known})

    def to_dict(self) -> dict:
        return asdict(self)


# Options that older checkpoints' specs may hold, with the value the network now always has: such
# a checkpoint loads when it used that value (see docs/experiments.md for why the others went).
REMOVED_OPTIONS = {"interest_routing": "attention", "interest_keys": "state", "interest_scale": False,
                   "item_bias": False}
# Options that changed only how a model was trained (dropped id rows, which interest scored the
# training softmax), never how it scores: such a checkpoint loads whatever they held.
TRAINING_ONLY_OPTIONS = {"id_dropout", "training_scores"}


class PrismRecNet(nn.Module):
    def __init__(self, spec: ModelSpec, encoder=None):
        super().__init__()
        self.spec = spec
        # The text tower needs the pretrained encoder's top layers; at inference the cached
        # item vectors are enough, so the encoder is optional.
        self.text_tower = TextTower(encoder, spec.lm_trainable_layers) if encoder is not None else None
        self.text_projection = nn.Sequential(nn.Linear(TEXT_DIM, spec.dim), nn.LayerNorm(spec.dim))
        self.id_embedding = nn.Embedding(spec.n_items + 1, spec.dim, padding_idx=0) if spec.use_id_embedding else None
        if self.id_embedding is not None:
            nn.init.normal_(self.id_embedding.weight, std=0.02)
            with torch.no_grad():
                self.id_embedding.weight[0].zero_()
        # Cosine scores times a scale (default 20: temperature 0.05) keep the softmax well-conditioned.
        self.logit_scale = spec.logit_scale
        self.users = InterestExtractor(
            spec.dim, spec.n_interests, spec.max_history, spec.user_layers, spec.user_heads, spec.dropout,
            spec.user_ffn,
        )

    def item_vectors(self, text_vectors: torch.Tensor) -> torch.Tensor:
        """[N+1, 384] pooled text vectors -> [N+1, d] item vectors (row 0 is padding). Rows past
        the id table are items added after training (tasks.training.new_items): text alone."""
        vectors = self.text_projection(text_vectors)
        if self.id_embedding is not None:
            ids = self.id_embedding.weight
            if len(vectors) > len(ids):
                return torch.cat([vectors[:len(ids)] + ids, vectors[len(ids):]])
            vectors = vectors + ids
        return vectors

    def interests(self, histories: torch.Tensor, items: torch.Tensor, with_attention: bool = True,
                  last_only: bool = False):
        """histories [B, L] item indices (0 = padding, left-padded) -> interests, attention."""
        # Without gradient (inference) a row gather, faster than indexing; training keeps indexing's backward.
        history = items[histories] if torch.is_grad_enabled() else nn.functional.embedding(histories, items)
        return self.users(history, histories == 0, with_attention, last_only)

    def forward(self, histories: torch.Tensor, keep: torch.Tensor, text_cache: torch.Tensor, refresh: torch.Tensor,
                refresh_states: torch.Tensor, refresh_mask: torch.Tensor,
                targets: torch.Tensor | None = None, negatives: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Training step: refresh the text vectors of items `refresh` with gradient, then
        return logits at the P positions where `keep` [B, L] is True (each item's score under
        its best interest, what inference ranks by), the fresh text vectors (for the caller to
        write back into its cache), the pairwise cosines between the long-term interests at those
        positions ([P, pairs]; zeros when K <= 2) and, given `targets`, how many of the positions'
        targets each interest scores highest ([K] counts, no gradient: a dead interest shows as ~0).

        Logits are [P, N+1] over the whole catalogue, or, given `negatives` [M] (item indices
        shared by the batch) and `targets` [B, L], [P, 1+M]: the target's score first, then the
        negatives' (a negative that is the position's own target is masked out).
        """
        text_vectors = text_cache
        fresh = text_cache[refresh]
        if self.text_tower is not None and len(self.text_tower.layers):
            fresh = self.text_tower(refresh_states, refresh_mask)
            text_vectors = text_cache.index_put((refresh,), fresh.to(text_cache.dtype))  # autocast may give bf16
        items = self.item_vectors(text_vectors)
        interests, _ = self.interests(histories, items, with_attention=False)
        interests = interests[keep]  # [P, K, d]: padding positions have no target, skip their logits
        overlap = self.interest_overlap(interests[:, 1:], items[1:].mean(0).detach())
        wanted = targets[keep] if targets is not None else None
        logits = self.training_logits(interests, items, wanted, negatives)
        wins = None
        if wanted is not None:
            with torch.no_grad():
                winner = self.target_scores(interests, items, wanted).argmax(1)
                wins = torch.bincount(winner, minlength=interests.shape[1])
        return logits, fresh, overlap, wins

    def training_logits(self, interests: torch.Tensor, items: torch.Tensor, targets: torch.Tensor | None,
                        negatives: torch.Tensor | None) -> torch.Tensor:
        """[P, N+1] best-interest scores of the whole catalogue, or, given `negatives`, [P, 1+M]."""
        if negatives is None:
            return self.best_match(interests, items)
        positive = self.target_scores(interests, items, targets).amax(1)
        negative = self.best_match(interests, items[negatives])
        negative = negative.masked_fill(negatives[None, :] == targets[:, None], torch.finfo(negative.dtype).min)
        return torch.cat([positive[:, None].to(negative.dtype), negative], dim=1)

    def target_scores(self, interests: torch.Tensor, items: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[P, K] scaled cosine of each position's target with each of its interests [P, K, d]."""
        return torch.einsum("pkd,pd->pk", self._unit_interests(interests), nn.functional.normalize(items[targets], dim=-1))

    def _unit_interests(self, interests: torch.Tensor) -> torch.Tensor:
        """Unit interests [..., K, d] times the logit scale."""
        return nn.functional.normalize(interests, dim=-1) * self.logit_scale

    def best_match(self, interests: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[P, K, d] interests, [N, d] items -> [P, N] scaled cosine of each item with its best interest."""
        interests = self._unit_interests(interests)
        items = nn.functional.normalize(items, dim=-1)
        dtype = torch.get_autocast_dtype(items.device.type) if torch.is_autocast_enabled(items.device.type) else items.dtype
        return in_row_buckets(lambda rows: BestInterestScore.apply(rows, items, dtype), interests, dtype)

    @staticmethod
    def interest_overlap(interests: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Pairwise cosines [P, K*(K-1)] between interests [P, K, d] (one row per position),
        measured after removing `centre` (the mean item vector): every item shares that direction,
        so it moves all of an interest's scores alike and says nothing about what the interest
        prefers. With fewer than two interests: zeros [P, 1] (nothing to tell apart)."""
        k = interests.shape[1]
        if k < 2:
            return interests.new_zeros((interests.shape[0], 1), dtype=torch.float32)
        unit = nn.functional.normalize(interests.float() - centre.float(), dim=-1)  # [P, K, d]
        cosine = unit @ unit.transpose(1, 2)
        off_diagonal = ~torch.eye(k, dtype=torch.bool, device=cosine.device)
        return cosine[:, off_diagonal]

    def match(self, interests: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Scaled cosine between interests [..., K, d] and the whole catalogue's items [N+1, d]
        -> [..., K, N+1] (inference)."""
        return torch.einsum("...kd,nd->...kn", self._unit_interests(interests), nn.functional.normalize(items, dim=-1))

    @torch.no_grad()
    def interest_scores(self, histories: torch.Tensor, items: torch.Tensor, with_attention: bool = True,
                        bf16: bool = False):
        """Inference for the state after the last history item: every item's score under every
        interest [B, K, N+1], the interests [B, K, d] and their attention over the history [B, K, L]
        (None without with_attention: ranking alone, e.g. validation, skips it). With bf16 the user
        tower runs under bf16 autocast, as training's steps do, and the scores are still float32
        cosines of its interests (bf16 scores, 8 significant bits, would tie across a catalogue)."""
        last, attention = self.last_interests(histories, items, with_attention, bf16)
        return self.match(last, items), last, attention

    @torch.no_grad()
    def last_interests(self, histories: torch.Tensor, items: torch.Tensor, with_attention: bool = True,
                       bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The interests after the last history item [B, K, d] (float32) and their attention [B, K, L]."""
        with torch.autocast(histories.device.type, dtype=torch.bfloat16, enabled=bf16):
            interests, attention = self.interests(histories, items, with_attention=with_attention, last_only=True)
        return interests[:, -1].float(), (attention[:, -1].float() if attention is not None else None)

    def query_vectors(self, interests: torch.Tensor) -> torch.Tensor:
        """Interests [..., K, d] as the vectors whose dot product with unit item vectors is match()'s score."""
        return self._unit_interests(interests)

    @torch.no_grad()
    def score_last(self, histories: torch.Tensor, items: torch.Tensor, with_attention: bool = True,
                   bf16: bool = False):
        """Inference for the state after the last history item (`bf16`: see interest_scores).

        Returns scores [B, N+1] (best interest per item), best interest [B, N+1], the
        interests [B, K, d] and their attention over the history [B, K, L].
        """
        per_interest, last, last_attention = self.interest_scores(histories, items, with_attention, bf16)
        scores, best = per_interest.max(1)
        return scores, best, last, last_attention


class BestInterestScore(torch.autograd.Function):
    """max over interests of interest·item, for P positions x N items, with a lean backward pass.

    Written out because autograd's amax over [P, K, N] scores spends ~40 % of an ML-1M training
    step building the winner mask and its gradient at full size. Here the forward pass is one
    batched matmul and a max over K contiguous [P, N] slabs (max-with-indices is 20x slower on
    CPU, so winners are found again in backward by equality; a tie goes to the first interest),
    and the backward pass routes each item's gradient to the interest that won it. The routing
    compares and masks the scores' bit patterns as integers: bf16 compares and selects run
    element by element on CPUs, integer ones are vectorised (~4x faster). amax returns one of its
    inputs, so every winner's bits equal the max's bits exactly.
    """

    @staticmethod
    def forward(ctx, interests: torch.Tensor, items: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        ctx.dtypes = interests.dtype, items.dtype
        with torch.autocast(items.device.type, enabled=False):
            a, b = interests.to(dtype), items.to(dtype)
            if a.shape[1] == 1:  # one interest: its scores are the best (no [P, N] copy to take the max)
                ctx.save_for_backward(a, b)
                return a[:, 0] @ b.T
            scores = a.transpose(0, 1) @ b.T  # [K, P, N]
            best = scores.amax(0)
        ctx.save_for_backward(a, b, scores, best)
        return best

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        a, b, *winners = ctx.saved_tensors  # scores [K, P, N] and their max, for K > 1
        grad = grad.to(a.dtype)
        k_count = a.shape[1]
        grad_a = torch.empty(a.shape, dtype=torch.float32, device=a.device)
        grad_b = torch.zeros(b.shape, dtype=torch.float32, device=b.device)
        unclaimed = None
        if k_count > 1:
            bits = _BITS[a.dtype]
            scores, best, grad_bits = winners[0].view(bits), winners[1].view(bits), grad.view(bits)
        with torch.autocast(b.device.type, enabled=False):
            for k in range(k_count):
                if k_count == 1:
                    mine = grad
                else:
                    won = scores[k] == best
                    if unclaimed is not None:
                        won &= unclaimed
                    if k < k_count - 1:  # won is inside unclaimed now: xor takes it out (one pass)
                        unclaimed = ~won if unclaimed is None else unclaimed.logical_xor_(won)
                    mine = (grad_bits * won).view(a.dtype)  # x * 1 keeps x's bits, x * 0 is +0.0
                grad_a[:, k] = (mine @ b).float()
                grad_b += (mine.T @ a[:, k]).float()
        return grad_a.to(ctx.dtypes[0]), grad_b.to(ctx.dtypes[1]), None


# Integer types of the same width, to compare and mask floating-point tensors by their bits.
_BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}


class SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits [P, C] against class indices [P], softmax taken in float32.

    The same value and gradient as `cross_entropy(logits.float(), labels)`, cheaper on a CPU for
    full-catalogue logits: the forward pass keeps the float32 log-probabilities, the backward
    pass turns them into probabilities with one vectorised exp and hands back the gradient in the
    logits' own dtype (bf16 under autocast), where autograd's log-softmax backward recomputes
    the exponentials element by element (~3x the time on CPU).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=1, dtype=torch.float32)
        ctx.save_for_backward(log_probs, labels)
        ctx.dtype = logits.dtype
        return -log_probs.gather(1, labels[:, None]).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_probs, labels = ctx.saved_tensors
        probs = log_probs.exp()
        probs[torch.arange(len(labels), device=labels.device), labels] -= 1
        return probs.mul_(grad / len(labels)).to(ctx.dtype), None  # float32 throughout, one rounding


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy (float32 softmax, gradient in the logits' dtype)."""
    return SoftmaxCrossEntropy.apply(logits, labels)


PAD_MULTIPLE = 8  # pad_history rounds its length up to this (fewer distinct shapes, aligned kernels)


def pad_history(sequences, max_history: int) -> torch.Tensor:
    """Histories -> [B, L] left-padded to the longest of them rounded up to PAD_MULTIPLE, at most
    max_history (its latest items). Inference sees only the newest L places, and positions count
    back from the newest item, so the outputs are those of padding to max_history; a batch of
    users of similar history lengths (sort them first) skips the padding's work."""
    longest = max((len(s) for s in sequences), default=1)
    length = min(max_history, -(-max(longest, 1) // PAD_MULTIPLE) * PAD_MULTIPLE)
    return pad_left(sequences, length)


def pad_left(sequences, length: int) -> torch.Tensor:
    """Histories (arrays of item indices) -> [B, length] left-padded with 0, keeping the latest items."""
    batch = np.zeros((len(sequences), length), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        tail = sequence[-length:]
        if len(tail):
            batch[row, length - len(tail):] = tail
    return torch.from_numpy(batch)
