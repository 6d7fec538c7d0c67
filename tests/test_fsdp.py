"""Sharded fine-tuning (`--strategy fsdp`, FSDP2) on CPU with 2 gloo processes and tiny models.

As in test_distributed.py, one `torchrun` launch of this file (run as a script, see the bottom) does the work the
tests below check, and each rank saves what it saw:
1. `greencore train --strategy fsdp` with GreenTrainer re-selecting before every step, watched step by step: which
   tensors have a gradient and optimizer state, and this rank's shard of every tensor before and after;
2. the same run stopped after a step and resumed from its sharded checkpoint;
3. the step-probe options of issue 18 and a classification run, sharded.
The tests compare them with single-process runs of the same global batches. A second launch runs under
`accelerate launch` with an FSDP2 configuration, where `--strategy auto` shards.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from greencore.training import distributed

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))

from test_distributed import CLASSIFY, ENGINE, OPTIONS, _cli_args, _free_port, _launch, _torchrun  # noqa: E402
from test_distributed import _follow as follow  # noqa: E402

FSDP = dict(ENGINE, strategy="fsdp", energy=False, epochs=2, max_steps=4)  # step 3 re-selects tensors step 2 froze


def _args(config: dict, out: Path) -> list[str]:
    """`greencore train` arguments for `config` (energy off: `--no-energy`)."""
    rest = {k: v for k, v in config.items() if k != "energy"}
    return _cli_args(rest, out) + ([] if config.get("energy", True) else ["--no-energy"])


# ---------------------------------------------------------------------------------------- in-process checks


def test_a_strategy_that_contradicts_the_launch_is_refused(monkeypatch):
    for var in ("ACCELERATE_USE_FSDP", "FSDP_VERSION"):
        monkeypatch.delenv(var, raising=False)
    single, two = distributed.SINGLE, distributed.DistInfo(rank=0, world_size=2)
    assert [distributed.resolve_strategy(s, single) for s in ("auto", "ddp")] == ["single", "single"]
    assert [distributed.resolve_strategy(s, two) for s in ("auto", "ddp", "fsdp")] == ["ddp", "ddp", "fsdp"]
    with pytest.raises(ValueError, match="--strategy fsdp shards the model over the ranks.*torchrun"):
        distributed.resolve_strategy("fsdp", single)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert distributed.resolve_strategy("auto", two) == "fsdp"
    with pytest.raises(ValueError, match="--strategy ddp, but accelerate launch is configured for FSDP"):
        distributed.resolve_strategy("ddp", two)
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match="FSDP version 1; greencore shards with FSDP2"):
        distributed.resolve_strategy("auto", two)


def test_auto_picking_fsdp_refuses_what_fsdp_refuses_and_runs_eager_attention(tmp_path, monkeypatch):
    """Under an accelerate FSDP launch `--strategy auto` becomes fsdp in set-up, after the config was checked as auto:
    the fsdp refusals apply there, before the model loads, and auto attention runs eager (the twin's kernels)."""
    from greencore.records import RunWriter
    from greencore.training import TrainConfig
    from greencore.training import setup as setup_module

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    two, writer = distributed.DistInfo(rank=0, world_size=2), RunWriter(tmp_path, enabled=False)
    base = {k: v for k, v in FSDP.items() if k != "strategy"} | {"device": "cpu", "energy": False}
    with monkeypatch.context() as m:
        m.setattr(setup_module, "load_model", lambda *a, **k: pytest.fail("loaded before refusing"))
        for setting, message in (({"split_tied": True}, "--split-tied True"), ({"attention": "sdpa"}, "sdpa's mask")):
            with pytest.raises(ValueError, match=f"--strategy auto picked fsdp.*{message}"):
                setup_module.setup(TrainConfig(**base, **setting), two, writer)
    asked = []

    def record(model, attention, device):
        asked.append(attention)
        raise RuntimeError("stop here")

    monkeypatch.setattr(setup_module, "set_attention", record)
    with pytest.raises(RuntimeError, match="stop here"):
        setup_module.setup(TrainConfig(**base), two, writer)
    assert asked == ["eager"]


def test_the_cli_refuses_fsdp_in_a_lone_process_with_one_line(tmp_path, capsys, monkeypatch):
    from greencore import cli

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = cli.main(_args(FSDP, tmp_path / "run"))
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # beside a progress bar
    assert code != 0 and len(errors) == 1 and "--strategy fsdp shards the model over the ranks" in errors[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("setting, message", [
    ({"split_tied": True, "scheme": "green"}, "--split-tied True"),
    ({"precision": "fp16"}, "fp16's loss scaling is not sharded"),
    ({"gradient_checkpointing": True}, "--gradient-checkpointing True"),
    ({"scheme": "lora"}, "adapters are not sharded yet"),
    ({"attention": "sdpa"}, "sdpa's mask code cannot run"),
    ({"strategy": "zero3"}, "one of auto, ddp, fsdp"),
])
def test_what_the_sharded_engine_does_not_run_is_refused_up_front(setting, message):
    from greencore.training import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**FSDP, **setting, "device": "cpu"})


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_trainer_callback_refuses_fsdp_and_says_what_to_use(tmp_path, tiny_models, monkeypatch):
    from transformers import TrainingArguments

    from greencore.callback import _refuse_fsdp

    model, _ = tiny_models("tiny-gpt2")
    args = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    _refuse_fsdp(TrainingArguments(**args), model)  # DDP or one process: fine
    with pytest.raises(ValueError, match="does not support FSDP.*greencore train --strategy fsdp"):
        _refuse_fsdp(TrainingArguments(**args, fsdp=True, fsdp_config={"fsdp_version": 2}), model)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --use_fsdp
    with pytest.raises(ValueError, match="does not support FSDP"):
        _refuse_fsdp(TrainingArguments(**args), model)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    with pytest.raises(ValueError, match="does not support FSDP"):  # parameters already sharded (DTensors)
        _refuse_fsdp(SimpleNamespace(fsdp=None), SimpleNamespace(parameters=lambda: [SimpleNamespace(device_mesh=1)]))


# ---------------------------------------------------------------------------------------- the 2-rank launch


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    proc = _torchrun(str(HERE), str(out))
    log = proc.stdout[-4000:] + proc.stderr[-8000:]
    assert proc.returncode == 0 and all((out / f"rank{r}.pt").exists() for r in range(2)), log
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_sharded_ranks_hold_half_of_each_tensor_and_select_identically(launched):
    out, (a, b) = launched
    ea, eb = a["engine"], b["engine"]
    assert ea["masks"] == eb["masks"] and len(ea["masks"]) == FSDP["max_steps"]
    assert ea["losses"] == eb["losses"] and ea["trainable"] == eb["trainable"]
    for name, shard in ea["weights"].items():  # the ranks' shards are the two halves of each tensor (dim 0)
        assert shard.shape[0] + eb["weights"][name].shape[0] == ea["shapes"][name][0], name
    s = json.loads((out / "run" / "summary.json").read_text())
    d = s["distributed"]
    assert d["strategy"] == "fsdp" and d["ddp_wraps"] == 0
    full_bytes = sum(torch.Size(shape).numel() * 4 for shape in ea["shapes"].values())
    assert sum(d["parameter_bytes_per_rank"]) == full_bytes  # counted from the shards: each rank holds its half
    assert all(abs(p - full_bytes / 2) <= 0.1 * full_bytes for p in d["parameter_bytes_per_rank"])


def test_frozen_tensors_hold_no_gradient_no_optimizer_state_and_keep_their_shard_bits(launched):
    _, ranks = launched
    for seen in (r["engine"] for r in ranks):
        trained = set().union(*map(set, seen["trainable"]))
        for step, (names, graded, stateful) in enumerate(zip(seen["trainable"], seen["graded"], seen["stateful"])):
            assert graded == sorted(names), step  # before the update: a gradient exactly for the selected tensors
            assert set(stateful) <= set(names), step  # a frozen tensor's optimizer state was dropped
        never = set(seen["initial"]) - trained
        assert never and all(torch.equal(seen["weights"][n], seen["initial"][n]) for n in never)
        assert all(not torch.equal(seen["weights"][n], seen["initial"][n]) for n in trained)


def test_a_re_selected_tensor_starts_clean_and_updates(launched):
    _, (a, _) = launched
    phases, steps = [set(t) for t in a["engine"]["trainable"]], a["engine"]["adam_steps"]
    back = [(n, i) for i in range(2, len(phases)) for n in phases[i] - phases[i - 1] if n in phases[i - 2]]
    assert back, "a tensor should be frozen by one selection and selected again by a later one"
    for name, i in back:
        assert steps[i][name] == 1  # its AdamW state was rebuilt: one step since its re-selection
        assert not torch.equal(a["engine"]["after"][i][name], a["engine"]["after"][i - 1][name])


def test_sharded_run_matches_a_single_process_run(launched, tmp_path):
    from safetensors.torch import load_file

    from greencore.records import checkpoints, load_run
    from greencore.training import TrainConfig, train

    out, (a, _) = launched
    single_config = {k: v for k, v in FSDP.items() if k != "strategy"}
    single = train(TrainConfig(**single_config), tmp_path / "single")
    record = load_run(tmp_path / "single")
    assert [s["mask"] for s in record.selections] == a["engine"]["masks"]
    assert a["engine"]["losses"] == pytest.approx([m["loss"] for m in record.train_rows], rel=1e-5)
    exported = load_file(str(checkpoints(out / "run")[-1] / "model.safetensors"))  # rank 0's full export
    reference = load_file(str(checkpoints(tmp_path / "single")[-1] / "model.safetensors"))
    assert exported.keys() == reference.keys()
    for name, value in reference.items():  # summation order differs: within a tenth of one Adam step
        assert float((exported[name] - value).abs().max()) <= 0.1 * FSDP["lr"], name
    s = json.loads((out / "run" / "summary.json").read_text())
    assert s["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    # per rank: what its half batches cost, measured; in total about what one process spends on the whole batches
    assert s["flops_total"] == pytest.approx(sum(s["flops_per_rank"]))
    assert s["flops_training"] == pytest.approx(single["flops_training"], rel=0.05)
    assert s["flops_full_equivalent"] == pytest.approx(single["flops_full_equivalent"], rel=0.05)


def test_sharded_run_matches_ddp_flops_exactly(launched):
    """The same run on the same 2 ranks under DDP: the same shards of the batches, so the same profile and measured
    FLOPs."""
    out, (a, _) = launched
    sharded = json.loads((out / "run" / "summary.json").read_text())
    ddp = json.loads((out / "ddp" / "summary.json").read_text())
    for key in ("flops_training", "flops_selection", "flops_full_equivalent"):
        assert sharded[key] == ddp[key], key
    # profiled on the model's weightless twin under fsdp, on the model itself under ddp: the same profile
    assert (out / "run" / "profile.json").read_text() == (out / "ddp" / "profile.json").read_text()
    # a DDP rank holds every moment; the sharded ranks split them, only AdamW's step counters (a float32 scalar per
    # trained tensor) are on both
    replica, shards = ddp["distributed"]["optimizer_bytes_per_rank"][0], sharded["distributed"]["optimizer_bytes_per_rank"]
    assert sum(shards) == replica + 4 * len(a["engine"]["stateful"][-1])


def test_a_sharded_run_resumes_from_its_checkpoint_exactly(launched):
    from greencore.records import SHARDS, checkpoints

    out, ranks = launched
    for seen in ranks:
        cut, whole = seen["resume"], seen["engine"]
        assert cut["stopped_at"] == 1 and cut["losses"] == whole["losses"] and cut["masks"] == whole["masks"]
        assert all(torch.equal(cut["weights"][n], whole["weights"][n]) for n in whole["weights"])
    folder = checkpoints(out / "cut")[0]
    assert (folder / SHARDS / ".metadata").exists() and not (folder / "optimizer.safetensors").exists()
    assert json.loads((folder / "state.json").read_text())["sharded"] is True


def test_step_probes_and_classification_run_sharded_as_on_one_process(launched, tmp_path):
    from greencore.records import load_run
    from greencore.training import TrainConfig, train

    _, (a, b) = launched
    for name, config in (("options", OPTIONS), ("classify", CLASSIFY)):
        assert a[name]["masks"] == b[name]["masks"] and a[name]["losses"] == b[name]["losses"], name
        single = train(TrainConfig(**{**config, "energy": False}), tmp_path / name)
        assert [s["mask"] for s in load_run(tmp_path / name).selections] == a[name]["masks"], name
        assert a[name]["summary"]["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5), name
    assert a["classify"]["summary"]["accuracy"] == pytest.approx(single["accuracy"])


def test_greencore_train_shards_under_accelerate_launch_with_fsdp2(tmp_path):
    pytest.importorskip("accelerate")
    from greencore.records import load_run

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "greencore.cli",
           *_args({**{k: v for k, v in FSDP.items() if k != "strategy"}, "max_steps": 2, "eval_rouge": False},
                      out)]
    proc = _launch(cmd, HF_HOME=str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run = load_run(out)
    assert run.summary["status"] == "finished" and run.summary["distributed"]["strategy"] == "fsdp"
    assert [m["step"] for m in run.train_rows] == [1, 2]


# ---------------------------------------------------------------------------------------- the launched ranks


def _local(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.to_local().detach().clone() for n, p in model.named_parameters()}


def _watched_engine(out: Path) -> dict:
    """`greencore train --strategy fsdp` through the CLI; per step, what has a gradient (seen just before the
    update), what has optimizer state and its AdamW step count, and this rank's shards."""
    from greencore import cli
    from greencore.training import Run, step

    seen: dict = {"losses": [], "trainable": [], "masks": [], "graded": [], "stateful": [], "adam_steps": [],
                  "after": []}
    events, update = Run.events, step._update

    def before_update(s):
        seen["graded"].append(sorted(n for n, p in s.model.named_parameters() if p.grad is not None))
        return update(s)

    def watched(run):
        for event in events(run):
            s = run.state
            if event["type"] == "selection":
                seen["masks"].append(event["mask"])
                seen.setdefault("initial", _local(s.model))
                seen.setdefault("shapes", {n: list(p.shape) for n, p in s.model.named_parameters()})
            elif event["type"] == "train":
                seen["losses"].append(event["loss"])
                seen["trainable"].append(sorted(n for n, p in s.model.named_parameters() if p.requires_grad))
                names = {id(p): n for n, p in s.model.named_parameters()}
                seen["stateful"].append(sorted(names[id(p)] for p in s.optimizer.state))
                seen["adam_steps"].append({names[id(p)]: int(st["step"]) for p, st in s.optimizer.state.items()})
                seen["after"].append(_local(s.model))
            elif event["type"] == "done":
                seen["weights"], seen["summary"] = _local(s.model), event["summary"]
            yield event

    Run.events, step._update = watched, before_update
    try:
        assert cli.main(_args(FSDP, out / "run")) == 0
    finally:
        Run.events, step._update = events, update
    return seen


def _follow(run, seen: dict) -> dict:
    return follow(run, seen, weights=_local)


def _resumed(out: Path) -> dict:
    """The engine's run stopped after step 1 (asked on rank 0 only), then resumed from its sharded checkpoint."""
    from greencore.training import Run, TrainConfig

    seen: dict = {"losses": [], "masks": []}
    run = Run(TrainConfig(**FSDP), out / "cut")
    for event in run.events():
        if event["type"] == "train":
            seen["losses"].append(event["loss"])
            if event["step"] == 1 and distributed.current().rank == 0:
                run.stop("interrupted")
        elif event["type"] == "selection":
            seen["masks"].append(event["mask"])
    seen["stopped_at"] = run.summary["steps"]
    return _follow(Run.resume(out / "cut"), seen)


def _main(out: Path) -> None:
    from greencore.training import Run, TrainConfig, train

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    results = {"engine": _watched_engine(out), "resume": _resumed(out)}
    for name, config in (("options", OPTIONS), ("classify", CLASSIFY)):
        results[name] = _follow(Run(TrainConfig(**{**config, "strategy": "fsdp", "energy": False}), out / name),
                                {"losses": [], "masks": []})
    train(TrainConfig(**{**FSDP, "strategy": "ddp"}), out / "ddp")
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
