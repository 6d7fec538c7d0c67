"""Schemes as registered objects: parsing, labels, and the behaviour each one carries."""

import subprocess
import sys

import numpy as np
import pytest

from greencore.schemes import SCHEMES, parse_scheme


@pytest.mark.parametrize("text", ["full", "green:0.5", "random:0.25", "lora", "prefix", "bitfit", "layernorm",
                                  "top-k:3", "green:1", "green:0.3333333333333333"])
def test_labels_read_back_as_the_same_scheme(text):
    scheme = parse_scheme(text)
    assert scheme.label == text and parse_scheme(scheme.label) == scheme


def test_parameters_and_behaviour_flags():
    assert parse_scheme("green", rho=0.4).rho == 0.4 and parse_scheme("green:0.6", rho=0.4).rho == 0.6
    assert parse_scheme("top-k").k == 2 and parse_scheme("top-k", k=5).k == 5
    assert {n for n, c in SCHEMES.items() if c.reselects} == {"green", "random"}
    assert {n for n, c in SCHEMES.items() if c.uses_peft} == {"lora", "prefix"}
    assert parse_scheme("random:0.5").importance_metric("taylor") == "random"
    assert parse_scheme("green:0.5").importance_metric("fisher") == "fisher"
    for bad, message in [("magic", "unknown scheme"), ("green", "needs a FLOPs budget"), ("green:2", "in \\(0, 1\\]"),
                         ("full:1", "takes no parameter"), ("top-k:x", "not a int"), ("top-k:0", "k >= 1")]:
        with pytest.raises(ValueError, match=message):
            parse_scheme(bad)


def test_predicted_ratios_follow_the_cost_model(tiny_profile):
    profile, importance = tiny_profile
    full = profile.full_flops
    assert parse_scheme("full").predicted_ratio(profile) == pytest.approx(1.0)
    lora = parse_scheme("lora").predicted_ratio(profile)
    assert lora == pytest.approx((profile.t_fp + profile.t_dy.sum()) / full)
    top = parse_scheme("top-k:1")
    assert top.predicted_ratio(profile) == pytest.approx(profile.step_flops(profile.as_mask(top.trainable(profile)))
                                                          / full)
    green = parse_scheme("green:0.6").predicted_ratio(profile, importance)
    assert profile.min_rho < green <= 0.6
    with pytest.raises(ValueError, match="importance"):
        parse_scheme("green:0.6").predicted_ratio(profile)


@pytest.fixture(scope="module")
def tiny_profile():
    from greencore import profile_model, tensor_importance
    from greencore.data import sample_batches
    from greencore.models import load_model

    model, tokenizer = load_model("tiny-gpt2")
    model.train()
    batch = sample_batches(tokenizer, is_encoder_decoder=False, batch_size=2, seq_len=64)[0]
    profile = profile_model(model, batch)
    return profile, np.asarray(tensor_importance(model, [batch], profile=profile))


def test_light_modules_import_without_torch():
    """`import greencore.select` and the CLI's --help stay fast: neither imports torch, transformers or gradio."""
    code = ("import sys, greencore.select, greencore.schemes, greencore.training.config, greencore.cli as c; "
            "c._build_parser(); print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'datasets', 'gradio', 'peft'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
