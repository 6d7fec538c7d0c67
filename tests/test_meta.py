"""Models without weights: configs built on the meta device profile exactly as loaded models do."""

import json

import numpy as np
import pytest
import torch

from conftest import TINY
from greencore import measure_training_flops, profile_model, select_tensors, tensor_importance
from greencore.data import IGNORE_INDEX
from greencore.explore import ExploreSpec, explore
from greencore.meta import ARCHITECTURES, load_config, meta_batch, meta_model
from greencore.models import load_model


def _assert_same_profile(a, b):
    assert a.names == b.names
    assert a.unused == b.unused
    assert a.t_fp == b.t_fp
    np.testing.assert_array_equal(a.t_dy, b.t_dy)
    np.testing.assert_array_equal(a.t_dw, b.t_dw)
    np.testing.assert_array_equal(a.reach, b.reach)
    assert [lay.to_dict() for lay in a.layout] == [lay.to_dict() for lay in b.layout]


@pytest.mark.parametrize("name", TINY + ["minilm"])
@pytest.mark.parametrize("scored", [None, 5])
def test_meta_profile_equals_cpu_profile(tiny_models, name, scored):
    loaded, _ = tiny_models(name)
    meta = meta_model(load_config(name))
    assert all(p.device.type == "meta" for p in meta.parameters())
    batch = meta_batch(meta, batch_size=2, seq_len=24, scored=scored)
    on_cpu, on_meta = profile_model(loaded, batch), profile_model(meta, batch)
    _assert_same_profile(on_cpu, on_meta)
    rng = np.random.default_rng(0)
    for mask in [rng.random(len(on_cpu)) < 0.3 for _ in range(3)]:
        assert on_meta.backward_flops(mask) == on_cpu.backward_flops(mask)
        # FlopCounterMode runs on the meta device too: the same measurement as on real weights
        assert (measure_training_flops(meta, batch, mask, names=on_meta.names)
                == measure_training_flops(loaded, batch, mask, names=on_cpu.names))


def test_meta_batch_labels_and_padding(tiny_models):
    meta = meta_model(load_config("tiny-gpt2"))
    pad = meta.config.pad_token_id
    batch = meta_batch(meta, batch_size=3, seq_len=40, scored=7, seed=1)
    assert set(batch) == {"input_ids", "labels"}  # full rows: no attention mask
    assert batch["input_ids"].shape == (3, 40) and batch["input_ids"].device.type == "cpu"
    assert not (batch["input_ids"] == pad).any()
    assert (batch["labels"] != IGNORE_INDEX).sum(dim=1).tolist() == [7, 7, 7]
    assert (batch["labels"][:, -7:] == batch["input_ids"][:, -7:]).all()
    assert torch.equal(meta_batch(meta, 3, 40, seed=1)["labels"], meta_batch(meta, 3, 40, seed=1)["input_ids"])
    for bad in (dict(batch_size=0, seq_len=8), dict(batch_size=2, seq_len=8, scored=9), dict(batch_size=2, seq_len=1.5)):
        with pytest.raises(ValueError, match="must be"):
            meta_batch(meta, **bad)


def test_profile_of_a_full_size_llama_matches_hand_counts():
    """Llama-3-8B at 2 x 64 on the meta device, against FLOPs counted by hand from the published dimensions."""
    meta = meta_model(load_config("llama-3-8b"))
    b, s, d, layers, kv, ff, vocab = 2, 64, 4096, 32, 8 * 128, 14336, 128256
    profile = profile_model(meta, meta_batch(meta, batch_size=b, seq_len=s))
    linear = layers * (d * d + 2 * d * kv + d * d + 3 * d * ff) + d * vocab  # q, k, v, o, gate/up/down, head
    attention = layers * 2 * (2 * b * s * s * d)  # q @ k^T and scores @ v, 2 FLOPs per multiply-add
    assert profile.t_fp == 2 * b * s * linear + attention
    assert profile.t_dw.sum() == 2 * b * s * linear  # every matmul weight's gradient
    assert profile.full_flops == 3 * profile.t_fp  # input gradients of every matmul down to the embeddings
    assert len(profile) == layers * 9 + 3  # 7 projections + 2 norms per block, embeddings, final norm, head


# The totals the model cards report (safetensors metadata); FLAN-T5-XL is left out: transformers 5 always ties T5's
# head to its embeddings (the checkpoint has its own head, 65.8M more parameters).
PUBLISHED_PARAMETERS = {
    "opt-2.7b": 2_651_596_800, "bloomz-3b": 3_002_557_440, "llama-3-8b": 8_030_261_248,
    "llama-3-70b": 70_553_706_496, "qwen2.5-7b": 7_615_616_512, "mistral-7b": 7_241_732_096,
}  # fmt: skip


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_architectures_build_with_their_published_sizes(name):
    arch = ARCHITECTURES[name]
    assert arch.source.startswith("https://huggingface.co/") and arch.source.endswith("/config.json")
    model = meta_model(load_config(name))
    assert all(p.device.type == "meta" for p in model.parameters())
    if name in PUBLISHED_PARAMETERS:
        assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]


def test_config_json_file_and_folder(tmp_path, tiny_models):
    loaded, _ = tiny_models("tiny-llama")
    loaded.config.save_pretrained(tmp_path)
    batch = meta_batch(loaded, batch_size=2, seq_len=16)
    expected = profile_model(loaded, batch)
    for source in (tmp_path, tmp_path / "config.json"):
        _assert_same_profile(profile_model(meta_model(load_config(str(source))), batch), expected)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="model is empty"):
        load_config(" ")
    with pytest.raises(ValueError, match="has no config.json"):
        load_config(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(ValueError, match="is not a transformers config"):
        load_config(str(tmp_path / "config.json"))
    with pytest.raises(ValueError, match="did you mean the built-in 'llama-3-8b'"):
        load_config("llama3-8b")
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):  # conftest sets it: no network call is tried
        load_config("someone/some-model")
    with pytest.raises(ValueError, match="transformers config"):
        meta_model({"model_type": "llama"})
    with pytest.raises(ValueError, match="architecture without weights.*config only"):
        load_model("llama-3-70b")


def test_structural_importance(tiny_models):
    model, _ = tiny_models("tiny-llama")
    meta = meta_model(load_config("tiny-llama"))
    batch = meta_batch(meta, 2, 16)
    profile = profile_model(meta, batch)
    params = dict(model.named_parameters())
    assert tensor_importance(meta, [batch], metric="uniform", profile=profile).tolist() == [1.0] * len(profile)
    counts = tensor_importance(meta, [], metric="params", profile=profile)
    assert counts.tolist() == [float(params[n].numel()) for n in profile.names]
    # the selector with parameter counts trains at least as many parameters as any single tensor that fits
    selection = select_tensors(profile, counts, 0.5)
    single = profile.t_fp + profile.single_tensor_costs() <= 0.5 * profile.full_flops
    assert counts[selection.mask].sum() >= counts[single].max()


def test_deepest_trainable_against_one_tensor_selections(tiny_models):
    model, _ = tiny_models("tiny-opt")
    profile = profile_model(model, meta_batch(model, 2, 32))
    for rho in np.linspace(profile.min_training_rho, 1.0, 6):
        alone = []
        for k in range(len(profile)):
            importance = np.zeros(len(profile))
            importance[k] = 1.0
            if select_tensors(profile, importance, float(rho)).mask[k]:
                alone.append(k)
        assert profile.deepest_trainable(float(rho)) == max(alone)
        assert np.flatnonzero(profile.within_reach(float(rho))).tolist() == alone
    assert profile.deepest_trainable(profile.min_rho) == -1


def test_explore_config_only_spec():
    spec = ExploreSpec(model="tiny-t5", batch_size=2, seq_len=32, config_only=True)
    assert spec.metric == "uniform" and ExploreSpec().metric == "taylor"
    assert spec.profile_key == ExploreSpec(model="tiny-t5", batch_size=2, seq_len=32, config_only=True,
                                           metric="params", dataset="other.jsonl", probe_batches=5).profile_key
    with pytest.raises(ValueError, match="needs the model's weights"):
        ExploreSpec(model="tiny-t5", config_only=True, metric="taylor")
    ex = explore(spec)
    assert all(p.device.type == "meta" for p in ex.profiled.model.parameters())
    selection = ex.select(0.5)
    assert ex.measured_ratio(selection)["ratio"] == pytest.approx(selection.predicted_ratio, rel=1e-12)
    names = [trace.name for trace in ex.tradeoff(0.5).data]
    assert names == ["blocks backprop can reach", "most parameters trainable"]


def test_hub_id_reads_only_the_config(tmp_path, monkeypatch, tiny_models):
    """A hub id in the Hugging Face cache with a config.json and no weights at all: enough to profile it."""
    import huggingface_hub

    loaded, _ = tiny_models("tiny-llama")
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    loaded.config.save_pretrained(repo / "snapshots" / revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    batch = meta_batch(loaded, batch_size=2, seq_len=16)
    _assert_same_profile(profile_model(meta_model(load_config("someone/tiny-llama")), batch),
                         profile_model(loaded, batch))
    assert [p.name for p in (repo / "snapshots" / revision).iterdir()] == ["config.json"]
