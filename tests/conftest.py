import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

TINY = ["tiny-opt", "tiny-bloom", "tiny-gpt2", "tiny-llama", "tiny-t5"]


def token_batch(model, batch_size: int = 2, seq_len: int = 32, seed: int = 0) -> dict:
    """A random batch with labels, shaped for decoder-only or encoder-decoder models."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(min(5, vocab - 1), vocab, (batch_size, seq_len), generator=g)
    if model.config.is_encoder_decoder:
        labels = torch.randint(min(5, vocab - 1), vocab, (batch_size, max(4, seq_len // 4)), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@pytest.fixture(scope="session")
def tiny_models():
    from greencore.models import load_model

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_model(name)
        return cache[name]

    return get
