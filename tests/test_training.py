"""The training loop on tiny models: records, honest FLOPs, schemes, resume, settings, and bad input."""

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from greencore.training import Run, TrainConfig, TrainingError, train
from greencore.records import checkpoints, load_run
from greencore.trainable import set_trainable


def config(**kw) -> TrainConfig:
    base = dict(model="tiny-gpt2", scheme="green:0.5", epochs=1, max_train_examples=48, max_eval_examples=8,
                batch_size=8, max_source_tokens=48, max_target_tokens=24, eval_rouge=False, lr=1e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_green_run_records_and_flops(tmp_path):
    summary = train(config(epochs=2), tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.config["scheme"] == "green:0.5"
    train_rows = [m for m in run.metrics if m["type"] == "train"]
    assert [m["step"] for m in train_rows] == list(range(1, summary["steps"] + 1))
    assert summary["steps"] == 2 * (summary["train_examples"] // 8)
    assert len(run.selections) == 2 == summary["selections"]  # one per epoch
    within = run.profile().within_reach(0.5)
    assert within.any() and not within.all()
    for sel in run.selections:
        assert sel["predicted_ratio"] <= 0.5 + 1e-9 and any(sel["mask"])
        # the probes scored exactly the tensors a selection at 0.5 can hold; the others hold 0 and are not chosen
        assert sel["scored"] == within.tolist()
        assert all(i == 0 and not m for i, m, ok in zip(sel["importance"], sel["mask"], sel["scored"]) if not ok)
    # FLOPs: measured training steps stay close to the predicted ratio (the profile's batch shape differs a little)
    assert summary["flops_ratio_training"] == pytest.approx(run.selections[0]["predicted_ratio"], abs=0.03)
    assert summary["flops_total"] == pytest.approx(summary["flops_training"] + summary["flops_selection"])
    # selection overhead = the probe passes of every selection + the one profiling forward pass
    probes = sum(s["flops_overhead"] for s in run.selections)
    assert 0 < summary["flops_selection"] - probes < run.selections[0]["flops_overhead"] / 2
    assert train_rows[-1]["flops"] == pytest.approx(summary["flops_total"])
    assert summary["flops_ratio"] == pytest.approx(summary["flops_total"] / summary["flops_full_equivalent"])
    for key in ("scheme", "rho", "steps", "flops_total", "flops_full_equivalent", "flops_ratio",
                "flops_ratio_training", "rouge1", "rouge2", "rougeL", "wall_seconds", "peak_memory_bytes",
                "trainable_params"):
        assert key in summary
    assert [c.name for c in checkpoints(tmp_path / "run")] == ["epoch-1", "epoch-2"]
    evals = [m for m in run.metrics if m["type"] == "eval"]
    assert [e["epoch"] for e in evals] == [1, 2]


def test_full_scheme_training_flops_equal_the_full_equivalent(tmp_path):
    summary = train(config(scheme="full", max_steps=3), tmp_path / "full")
    # the same steps measured two ways: during training, and by measure_training_flops with every tensor trainable
    assert summary["flops_training"] == summary["flops_full_equivalent"]
    assert summary["flops_selection"] == 0 and summary["flops_ratio"] == 1.0
    assert summary["trainable_params"] == summary["total_params"]


def _weights(path):
    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("scheme,expect", [
    ("layernorm", lambda n: ".ln_" in n),
    ("bitfit", lambda n: n.endswith(".bias")),
    ("top-k:1", lambda n: n.startswith("transformer.h.3.") or n.startswith("transformer.ln_f.")),
])
def test_static_schemes_train_exactly_their_tensors(tmp_path, scheme, expect):
    from greencore.models import load_model

    initial = {n: p.detach().clone() for n, p in load_model("tiny-gpt2")[0].state_dict().items()}
    train(config(scheme=scheme, max_steps=3), tmp_path / "r")
    final = _weights(checkpoints(tmp_path / "r")[-1])
    for name, value in final.items():
        changed = not torch.equal(value, initial[name])
        assert changed == expect(name), name


def test_lora_trains_adapters_only_and_counts_full_fine_tuning_on_the_base(tmp_path):
    summary = train(config(scheme="lora", max_steps=2), tmp_path / "lora")
    assert 0 < summary["trainable_params"] < 0.1 * summary["total_params"]
    # LoRA still pays the activation gradient through the whole network: well above the forward-only third
    assert 0.34 < summary["flops_ratio_training"] < 0.8


def test_random_scheme_uses_the_same_budget(tmp_path):
    summary = train(config(scheme="random:0.5", max_steps=2), tmp_path / "rnd")
    run = load_run(tmp_path / "rnd")
    assert run.selections[0]["metric"] == "random"
    assert summary["flops_ratio_training"] <= 0.52


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path):
    cfg = config(epochs=2, interval=3, interval_unit="step", max_train_examples=40)
    train(cfg, tmp_path / "whole")
    run = Run(cfg, tmp_path / "cut")
    for event in run.events():
        if event["type"] == "train" and event["step"] == 4:
            run.stop("interrupted")
    assert run.summary["status"] == "interrupted"
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["status"] == "interrupted"
    resumed = Run.resume(tmp_path / "cut")
    for _ in resumed.events():
        pass
    assert resumed.summary["status"] == "finished"
    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "cut")
    assert [m["loss"] for m in a.metrics if m["type"] == "train"] == [m["loss"] for m in b.metrics if m["type"] == "train"]
    assert [s["mask"] for s in a.selections] == [s["mask"] for s in b.selections]
    wa, wb = _weights(checkpoints(tmp_path / "whole")[-1]), _weights(checkpoints(tmp_path / "cut")[-1])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.summary["flops_total"] == pytest.approx(a.summary["flops_total"])


def test_frozen_tensors_hold_no_grad_and_no_optimizer_state():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    set_trainable(model, ["1.weight"], opt)
    first = dict(model.named_parameters())
    assert [n for n, p in first.items() if p.requires_grad] == ["1.weight"]
    assert first["0.weight"].grad is None and first["0.weight"] not in opt.state
    assert first["1.weight"] in opt.state
    set_trainable(model, ["0.weight", "1.weight"], opt)
    assert first["0.weight"] not in opt.state  # re-selected: starts from a clean state
    with pytest.raises(ValueError, match="not parameters"):
        set_trainable(model, ["nope"], opt)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown scheme"):
        config(scheme="magic")
    with pytest.raises(ValueError, match="trains no tensor"):
        train(config(scheme="green:0.2"), tmp_path / "low")
    with pytest.raises(ValueError, match="--prompt chat needs a decoder-only model whose tokenizer has a chat"):
        train(config(prompt="chat"), tmp_path / "chat")
    assert not (tmp_path / "chat").exists()
    with pytest.raises(ValueError, match="--prompt 'poem' \\(prompt=\\) must be one of auto, tldr, chat"):
        config(prompt="poem")
    with pytest.raises(ValueError, match="no bias"):
        train(config(model="tiny-llama", scheme="bitfit"), tmp_path / "bitfit")
    (tmp_path / "taken").mkdir()
    train(config(scheme="full", max_steps=1), tmp_path / "taken")
    with pytest.raises(ValueError, match="already holds a run"):
        Run(config(scheme="full"), tmp_path / "taken")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError):
        train(config(dataset=str(empty)), tmp_path / "empty")
    bad = tmp_path / "fields.jsonl"
    bad.write_text("\n".join(json.dumps({"text": f"t {i}", "summary": "s"}) for i in range(20)))
    with pytest.raises(ValueError, match="text"):
        train(config(dataset=str(bad)), tmp_path / "fields")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    cfg = config(scheme="full", epochs=3, lr=1e6, max_grad_norm=0.0)
    with pytest.raises(TrainingError, match="loss became"):
        train(cfg, tmp_path / "nan")
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "failed"
    for ckpt in checkpoints(tmp_path / "nan"):
        assert all(torch.isfinite(t).all() for t in _weights(ckpt).values())


def test_a_budget_that_trains_nothing_is_refused_before_training(tmp_path):
    """Just above the forward pass alone (1/3 of a full step) no tensor is affordable: an error before any step,
    whose suggested rho then trains at least one tensor within that budget."""
    with pytest.raises(ValueError, match=r"rho=0\.34 trains no tensor.*choose rho >= (\d\.\d{3})") as err:
        train(config(scheme="green:0.34", max_steps=2), tmp_path / "none")
    assert not (tmp_path / "none").exists()
    suggested = float(re.search(r"choose rho >= (\d\.\d{3})", str(err.value)).group(1))
    summary = train(config(scheme=f"green:{suggested}", max_steps=2), tmp_path / "some")
    assert load_run(tmp_path / "some").selections[0]["trainable_tensors"] >= 1 and summary["trainable_params"] > 0
    assert 1 / 3 < summary["flops_ratio_training"] <= suggested * 1.02  # measured by FlopCounterMode


def test_profile_is_made_on_the_commonest_batch_shape_of_the_first_epoch(tmp_path):
    """An encoder-decoder's cost ratio moves with the summary length: the budget is set on the shape most batches have."""
    from collections import Counter

    import numpy as np

    from greencore.data import batches, pad_token_id
    from greencore.models import load_model
    from greencore.profile import profile_model
    from greencore.select import select_tensors

    # on Python 3.11's stdlib these settings make 3 batches, the first 16 summary tokens wide and the others 32
    cfg = config(model="tiny-t5", max_train_examples=96, max_target_tokens=18)
    run = Run(cfg, tmp_path / "run")
    events = run.events()
    selection = next(e for e in events if e["type"] == "selection")
    state = run.state

    fill = {"labels": -100, "attention_mask": 0, "input_ids": pad_token_id(state.tokenizer)}

    def padded(batch):  # the engine pads every width up to a multiple of 16
        return {k: torch.nn.functional.pad(v, (0, -v.shape[1] % 16), value=fill[k]) for k, v in batch.items()}

    epoch = [padded(b) for b in batches(state.tokenizer, state.data.train_rows, batch_size=8, shuffle=True, seed=0,
                                        drop_last=True)]
    widths = Counter((b["input_ids"].shape[1], b["labels"].shape[1]) for b in epoch)
    assert len(widths) > 1  # the check below means something only when shapes differ
    commonest = widths.most_common(1)[0][0]
    batch = next(b for b in epoch if (b["input_ids"].shape[1], b["labels"].shape[1]) == commonest)
    model, _ = load_model(cfg.model, seed=cfg.seed)  # every tensor trainable, as when the engine profiled
    profile = profile_model(model.train(), batch)
    expected = select_tensors(profile, np.array(selection["importance"]), cfg.spec.rho)
    assert selection["mask"] == expected.mask.tolist()
    assert selection["predicted_ratio"] == pytest.approx(expected.predicted_ratio)
    events.close()


def test_rho_has_one_source_of_truth(tmp_path):
    """A parameter written in the scheme wins over the rho field, and config.json records what ran."""
    assert TrainConfig(scheme="green", rho=0.7) == TrainConfig(scheme="green:0.7")
    cfg = config(scheme="green:0.7", rho=0.5, max_steps=1)
    assert (cfg.scheme, cfg.rho, cfg.k) == ("green:0.7", 0.7, None)
    assert (TrainConfig(scheme="full").rho, TrainConfig(scheme="top-k").k) == (None, 2)
    train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.config["rho"] == 0.7 and run.config["scheme"] == "green:0.7"
    assert run.selections[0]["rho"] == 0.7 == run.summary["rho"]
    assert 0.5 < run.selections[0]["predicted_ratio"] <= 0.7
    assert TrainConfig.from_dict(run.config) == cfg


def test_a_run_saves_the_profile_it_selected_with(tmp_path):
    """profile.json is the profile of the batch the selection was made on; every selection refers to it."""
    import numpy as np

    from greencore.models import load_model
    from greencore.profile import profile_model

    cfg = config(max_steps=1)
    run = Run(cfg, tmp_path / "run")
    events = run.events()
    selection = next(e for e in events if e["type"] == "selection")
    model, _ = load_model(cfg.model, seed=cfg.seed)  # every tensor trainable, as when the run profiled
    fresh = profile_model(model.train(), run.state.data.profiling_batch(model))
    events.close()
    record = load_run(tmp_path / "run")
    saved = record.profile()
    assert json.loads((tmp_path / "run" / "profile.json").read_text()) == fresh.to_dict()
    assert saved.names == fresh.names and saved.layout == fresh.layout
    assert np.array_equal(saved.t_dw, fresh.t_dw) and np.array_equal(saved.t_dy, fresh.t_dy)
    assert selection["profile"] == "profile.json" and selection["names"] == saved.names
    # the selection's predicted ratio follows from the saved numbers (chain model, an upper bound of the op graph)
    assert selection["predicted_ratio"] <= saved.step_flops(np.array(selection["mask"])) / saved.full_flops + 1e-12


def test_an_added_scheme_needs_only_its_class(tmp_path):
    """Registering one Scheme subclass makes it usable by TrainConfig, the loop and the records."""
    from dataclasses import dataclass

    from greencore.schemes import SCHEMES, Scheme, register

    @register
    @dataclass(frozen=True)
    class FinalNorm(Scheme):
        name = "final-norm"
        description = "the normalisation tensors outside the blocks"

        def trainable(self, profile):
            return [lay.name for lay in profile.layout if lay.block is None and "norm" in lay.type]

    try:
        train(config(scheme="final-norm", max_steps=2), tmp_path / "r")
        from greencore.models import load_model

        initial = {n: p.detach().clone() for n, p in load_model("tiny-gpt2")[0].state_dict().items()}
        final = _weights(checkpoints(tmp_path / "r")[-1])
        changed = {n for n, v in final.items() if not torch.equal(v, initial[n])}
        assert changed == {"transformer.ln_f.weight", "transformer.ln_f.bias"}
        assert load_run(tmp_path / "r").summary["scheme"] == "final-norm"
    finally:
        SCHEMES.pop("final-norm")


def test_cli_flags_and_app_defaults_come_from_train_config():
    import argparse
    import dataclasses

    from greencore.cli import _build_parser

    parser = _build_parser()
    train_parser = next(a for a in parser._actions if a.dest == "command").choices["train"]
    flags = {a.dest: a for a in train_parser._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "label":
            continue
        action = flags[f.name]
        assert action.help and f.metadata["help"] in action.help, f.name
        assert action.default == argparse.SUPPRESS, f.name  # TrainConfig's default applies; --resume sees what was given
        if f.default is not None and f.type != "bool":
            assert f"(default: {f.default})" in action.help, f.name
    assert flags["eval_rouge"].option_strings == ["--no-rouge"]
    from greencore.importance import IMPORTANCE_METRICS

    assert all(m in flags["metric"].help for m in IMPORTANCE_METRICS)
    args = parser.parse_args(["train", "--out", "x", "--scheme", "green", "--rho", "0.6", "--no-rouge"])
    from greencore.cli import _config

    assert _config(args) == TrainConfig(scheme="green:0.6", eval_rouge=False)
    assert _config(parser.parse_args(["train", "--out", "x"])) == TrainConfig()


def test_importance_ema_averages_the_selections_probes_and_resumes_exactly(tmp_path):
    """Issue 18's accumulated importance: each selection scores ema x the previous score + (1 - ema) x its probe
    (the first, its probe alone), recorded beside the probe's own score, and a resumed run carries it on."""
    ema = 0.75
    cfg = config(scheme="green:0.6", epochs=2, interval=1, interval_unit="step", max_steps=4, importance_ema=ema)
    train(cfg, tmp_path / "whole")
    selections = load_run(tmp_path / "whole").selections
    assert len(selections) == 4
    np.testing.assert_array_equal(selections[0]["importance"], selections[0]["probe_importance"])
    for before, now in zip(selections, selections[1:]):
        expected = ema * np.array(before["importance"]) + (1 - ema) * np.array(now["probe_importance"])
        np.testing.assert_allclose(now["importance"], expected, rtol=1e-12)
        assert not np.allclose(now["importance"], now["probe_importance"])
    run = Run(cfg, tmp_path / "cut")
    for event in run.events():
        if event["type"] == "train" and event["step"] == 2:
            run.stop("interrupted")
    for _ in Run.resume(tmp_path / "cut").events():
        pass
    resumed = load_run(tmp_path / "cut").selections
    assert [s["importance"] for s in resumed] == [s["importance"] for s in selections]
    assert [s["mask"] for s in resumed] == [s["mask"] for s in selections]
    with pytest.raises(ValueError, match=r"--importance-ema 1.0 \(importance_ema=\) must be in \[0, 1\)"):
        config(importance_ema=1.0)


def test_split_tied_trains_the_head_use_as_predicted_and_resumes_exactly(tmp_path):
    """Issue 18's head use of a tied weight as a run option: the selection can hold the head's use without the
    embedding's, the steps cost what the split profile predicts and a resumed run matches."""
    # magnitude scores both uses alike (the weight's size, the largest): the head's use is chosen, the embedding's
    # is out of the budget's reach
    cfg = config(scheme="green:0.45", split_tied=True, interval=2, interval_unit="step", max_steps=4,
                 metric="magnitude")
    summary = train(cfg, tmp_path / "whole")
    run = load_run(tmp_path / "whole")
    names = run.profile().names
    assert names[0] == "lm_head.weight" and names[-1] == "transformer.wte.weight"
    assert all(s["mask"][0] and not s["mask"][-1] for s in run.selections)
    assert summary["prediction_miss"] == 0
    assert summary["flops_ratio_training"] <= 0.45 + 0.02
    run2 = Run(cfg, tmp_path / "cut")
    for event in run2.events():
        if event["type"] == "train" and event["step"] == 3:
            run2.stop("interrupted")
    for _ in Run.resume(tmp_path / "cut").events():
        pass
    a, b = load_run(tmp_path / "whole"), load_run(tmp_path / "cut")
    assert [m["loss"] for m in a.metrics if m["type"] == "train"] == [m["loss"] for m in b.metrics if m["type"] == "train"]
    wa, wb = _weights(checkpoints(tmp_path / "whole")[-1]), _weights(checkpoints(tmp_path / "cut")[-1])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(ValueError, match=r"--split-tied True \(split_tied=\) must be off for a scheme that does not "
                                         r"select tensors"):
        config(scheme="full", split_tied=True)


def test_probe_step_scores_the_step_it_precedes_and_updates_only_the_selection(tmp_path):
    """Issue 18's cheaper probe: with probe="step" a re-selection scores the gradients of the step it precedes. Its
    scores equal tensor_importance on that same batch and model (a separate computation), no probe pass is counted,
    and the step moves the selected tensors only."""
    from greencore.importance import tensor_importance
    from greencore.records import RunWriter
    from greencore.training import distributed
    from greencore.training.checkpoint import seed_everything
    from greencore.training.setup import setup

    cfg = config(scheme="green:0.5", probe="step", max_steps=1, keep_checkpoints=1)
    seed_everything(cfg.seed)
    s = setup(cfg, distributed.SINGLE, RunWriter(tmp_path / "scratch", enabled=False))
    batch, _ = next(iter(s.data.epoch(0)))
    expected = tensor_importance(s.model, [batch], torch.optim.AdamW(s.model.parameters(), lr=cfg.lr,
                                                                     weight_decay=cfg.weight_decay),
                                 profile=s.profile, rho=0.5)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    summary = train(cfg, tmp_path / "run")
    run = load_run(tmp_path / "run")
    (row,) = run.selections
    assert row["probe"] == "step" and row["flops_overhead"] == 0
    np.testing.assert_allclose(row["probe_importance"], expected, rtol=1e-4, atol=1e-12)
    assert summary["flops_selection"] == run.profile().t_fp  # the profiling pass only
    after = _weights(checkpoints(tmp_path / "run")[-1])
    moved = {n for n in before if n in after and not torch.equal(before[n], after[n])}
    chosen = {n for n, m in zip(row["names"], row["mask"]) if m}
    assert moved == chosen
    # the step's backward reached every tensor within rho: it cost more than the selection alone would
    profile = run.profile()
    first = next(m for m in run.metrics if m["type"] == "train")
    ratio = (first["flops"] - profile.t_fp) / first["flops_full"]  # this batch's shape is close to the profile's
    assert ratio == pytest.approx(profile.step_flops(row["scored"]) / profile.full_flops, abs=0.03)
    assert ratio > row["predicted_ratio"] + 0.05
    with pytest.raises(ValueError, match=r"--split-tied True \(split_tied=\) must be off with --probe step"):
        config(split_tied=True, probe="step")


def test_rho_shift_spends_the_run_budget_early_and_keeps_its_mean(tmp_path):
    """Issue 18's budget over the run: with rho_shift the budget falls linearly from rho + shift to rho - shift, each
    selection gets that line's mean over the steps it trains (computed here by hand), the step-weighted mean is rho,
    and each interval's measured steps cost what its selection predicts."""
    rho, shift, total, every = 0.6, 0.2, 6, 2
    summary = train(config(scheme=f"green:{rho}", rho_shift=shift, interval=every, interval_unit="step", epochs=2,
                           max_steps=total), tmp_path / "run")
    run = load_run(tmp_path / "run")
    starts = [0, 2, 4]
    assert [s["step"] for s in run.selections] == starts
    expected = [rho + shift * (1 - (a + a + every) / total) for a in starts]  # the line at each interval's middle
    assert [s["rho"] for s in run.selections] == pytest.approx(expected)
    assert expected[0] > rho > expected[-1] and sum(expected) * every / total == pytest.approx(rho)
    assert summary["rho"] == rho
    train_rows = [m for m in run.metrics if m["type"] == "train"]
    flops = [0.0] + [m["flops"] for m in train_rows]
    full = [0.0] + [m["flops_full"] for m in train_rows]
    for sel, a in zip(run.selections, starts):
        assert sel["predicted_ratio"] <= sel["rho"] + 1e-9
        spent = flops[a + every] - flops[a] - sel["flops_overhead"] - (run.profile().t_fp if a == 0 else 0)
        assert spent / (full[a + every] - full[a]) == pytest.approx(sel["predicted_ratio"], abs=0.03)
    assert run.selections[0]["predicted_ratio"] > run.selections[-1]["predicted_ratio"]
    with pytest.raises(ValueError, match=r"--rho-shift 0.1 \(rho_shift=\) must be 0, or for a scheme that selects"):
        config(scheme="full", rho_shift=0.1)
    with pytest.raises(ValueError, match=r"--rho-shift 0.5 \(rho_shift=\) .*rho \+ shift <= 1 \(rho=0.6\)"):
        config(scheme="green:0.6", rho_shift=0.5)
    with pytest.raises(ValueError, match=r"--rho-shift 0.6 \(rho_shift=\) .*in \(0, rho\)"):
        config(scheme="green:0.4", rho_shift=0.6)
    # one selection per epoch over 2 epochs: the second's budget is the line's mean over the second half, 0.5 - 0.32/2
    with pytest.raises(ValueError, match=r"--rho-shift 0.32 lowers the last selection's budget to 0.340: rho=0.34 "
                                         r"trains no tensor"):
        train(config(scheme="green:0.5", rho_shift=0.32, epochs=2), tmp_path / "low")
    assert not (tmp_path / "low").exists()
