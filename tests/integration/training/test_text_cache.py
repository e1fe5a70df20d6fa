"""The frozen MiniLM states kept on disk between trainings (tasks.training.text_cache), with the real model."""

import pytest
import torch

from tasks.model.text_tower import load_language_model
from tasks.training import text_cache
from tasks.training.text_cache import cache_key, frozen_states

TEXTS = ["Toy Story (1995). Animation|Children's|Comedy", "Heat (1995). Action|Crime|Thriller",
         "Casablanca (1942). Drama|Romance|War"]


@pytest.fixture(scope="module")
def minilm():
    return load_language_model()


def test_a_second_training_reads_what_the_first_computed(minilm, tmp_path, monkeypatch):
    tokenizer, encoder = minilm
    computed = frozen_states(TEXTS, tokenizer, encoder, 1, 32, tmp_path)
    (stored,) = tmp_path.glob("*.pt")
    assert stored.stem == cache_key(TEXTS, 1, 32)

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder ran although the states were on disk")

    monkeypatch.setattr(text_cache, "encode_frozen", no_encoder)
    read = frozen_states(TEXTS, tokenizer, encoder, 1, 32, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(computed, read, strict=True))
    # the same as running the encoder without a cache, bit for bit
    monkeypatch.undo()
    plain = frozen_states(TEXTS, tokenizer, encoder, 1, 32, None)
    assert all(torch.equal(a, b) for a, b in zip(computed, plain, strict=True))


def test_a_changed_catalogue_or_setting_is_another_entry_and_old_ones_go(minilm, tmp_path, monkeypatch):
    tokenizer, encoder = minilm
    monkeypatch.setattr(text_cache, "KEEP", 2)
    keys = [cache_key(TEXTS, 1, 32), cache_key(TEXTS[:2] + ["Casablanca (1942). Drama"], 1, 32),
            cache_key(TEXTS, 2, 32), cache_key(TEXTS, 1, 16)]
    assert len(set(keys)) == 4
    frozen_states(TEXTS, tokenizer, encoder, 1, 32, tmp_path)
    frozen_states(TEXTS, tokenizer, encoder, 2, 32, tmp_path)
    frozen_states(TEXTS, tokenizer, encoder, 1, 16, tmp_path)
    assert sorted(f.stem for f in tmp_path.glob("*.pt")) == sorted([keys[2], keys[3]])  # the two newest


def test_a_torn_file_is_computed_again(minilm, tmp_path):
    tokenizer, encoder = minilm
    (tmp_path / f"{cache_key(TEXTS, 1, 32)}.pt").write_bytes(b"not a tensor file")
    states, masks = frozen_states(TEXTS, tokenizer, encoder, 1, 32, tmp_path)
    assert states.shape[0] == len(TEXTS) + 1 == masks.shape[0]  # row 0: the padding item
    assert not states[0].any() and bool((masks[0] == 1).all())
    assert torch.load(tmp_path / f"{cache_key(TEXTS, 1, 32)}.pt", weights_only=True)["states"].shape == states.shape


def test_a_cache_folder_that_cannot_be_written_warns_and_training_goes_on(minilm, tmp_path, caplog):
    tokenizer, encoder = minilm
    blocked = tmp_path / "a-file"
    blocked.write_text("paths.cache points below a file")
    states, masks = frozen_states(TEXTS, tokenizer, encoder, 1, 32, blocked / "text-states")
    plain = frozen_states(TEXTS, tokenizer, encoder, 1, 32, None)
    assert torch.equal(states, plain[0]) and torch.equal(masks, plain[1])
    assert "could not keep the frozen MiniLM states in" in caplog.text and "paths.cache" in caplog.text
