"""Distributed (DDP) fine-tuning on CPU with 2 gloo processes and tiny models.

Process start-up (importing torch and transformers) dominates on a small machine, so one `torchrun` launch of this
file (run as a script, see the bottom) does the work most tests below check, and each rank saves what it saw:
1. DDP and a tensor frozen when the model was wrapped and unfrozen later: not all-reduced under that wrapper,
   all-reduced once re-wrapped;
2. `greencore train` (the CLI) with GreenTrainer and several re-selections, compared afterwards with a
   single-process run over the same global batches, and the same run stopped after a step and resumed;
3. a `transformers.Trainer` run with the GreenTrainerCallback;
4. last, a rank that crashes in the middle of a run: the launch must exit non-zero with its error, not hang.
A second launch runs `greencore train` under `accelerate launch`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from greencore.training import distributed

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
LAUNCH_TIMEOUT_S = 240  # a hung launch fails the test instead of the whole suite
PG_TIMEOUT_S = "60"  # the process group's timeout inside the launched ranks

# tiny-llama has no dropout, so the two ranks' half batches compute exactly what one process computes on the whole
ENGINE = dict(model="tiny-llama", scheme="green:0.5", interval=1, interval_unit="step", max_steps=3, probe_batches=1,
              max_train_examples=48, max_eval_examples=8, batch_size=8, max_source_tokens=48, max_target_tokens=24,
              eval_rouge=False, lr=1e-3, seed=0, device="cpu")


def _cli_args(config: dict, out: Path) -> list[str]:
    args = ["train", "--out", str(out)]
    for key, value in config.items():
        if key == "eval_rouge":
            args += [] if value else ["--no-rouge"]
        else:
            args += ["--" + key.replace("_", "-"), str(value)]
    return args


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT", "GREENCORE_DISTRIBUTED")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               GREENCORE_DIST_TIMEOUT=PG_TIMEOUT_S, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE.parent)]),
               **extra)
    return env


def _launch(cmd: list[str], timeout: float = LAUNCH_TIMEOUT_S, **env: str) -> subprocess.CompletedProcess:
    """Run a launcher in its own session; on timeout kill the launcher and every rank it started, then fail."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd[:6])} ... hung for {timeout} s:\n{out[-3000:]}\n{err[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    return _launch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------- in-process helpers


def test_without_a_launcher_everything_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.setup()
    assert info == distributed.SINGLE and not info.enabled and info.is_main
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0]
    assert distributed.all_gather_object("x") == ["x"] and distributed.broadcast_object(3) == 3
    assert distributed.on_main(lambda: 7) == 7 and not distributed.any_rank(False)
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc_per_node 1: an ordinary run
    assert distributed.setup() == distributed.SINGLE
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("GREENCORE_DISTRIBUTED", "0")  # detection switched off
    assert distributed.setup() == distributed.SINGLE
    monkeypatch.setenv("GREENCORE_DISTRIBUTED", "1")
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="RANK, MASTER_ADDR, MASTER_PORT is not set"):
        distributed.setup()


def test_sharding_covers_each_global_batch_in_the_single_process_order(tiny_models):
    from greencore.data import batches, collate

    _, tokenizer = tiny_models("tiny-gpt2")
    rows = [{"input_ids": list(range(5, 9 + i % 5)), "labels": [-100] * 3 + list(range(8, 9 + i % 5))}
            for i in range(27)]
    groups = distributed.batch_indices(len(rows), 8, seed=11)
    expected = list(batches(tokenizer, rows, batch_size=8, shuffle=True, seed=11, drop_last=True))
    assert len(groups) == len(expected) == 3
    for group, batch in zip(groups, expected):
        assert torch.equal(collate(tokenizer, [rows[i] for i in group])["input_ids"], batch["input_ids"])
        ranks = [distributed.DistInfo(rank=r, world_size=3) for r in range(3)]
        shards = [distributed.shard(group, info) for info in ranks]
        assert sorted(i for s in shards for i in s) == sorted(group) and [len(s) for s in shards] == [3, 3, 2]
    parts = [distributed.chunk(list(range(10)), distributed.DistInfo(rank=r, world_size=3)) for r in range(3)]
    assert sum(parts, []) == list(range(10))


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-t5"])
def test_label_tokens_weight_shards_into_the_global_mean_loss(tiny_models, name):
    """The shard weights the engine uses: sum(share_r * loss_r) is the loss of the whole batch."""
    from greencore.data import encode_examples, scored_targets
    from greencore.evaluate import validation_loss

    model, tokenizer = tiny_models(name)
    enc_dec = bool(model.config.is_encoder_decoder)
    texts = {"source": [f"def f{i}(x): return x + {i} " * (1 + i % 4) for i in range(6)],
             "target": [f"add {i} to x" + " please" * (i % 3) for i in range(6)]}
    rows, _ = encode_examples(tokenizer, texts, is_encoder_decoder=enc_dec, max_source_tokens=40, max_target_tokens=12)
    whole = validation_loss(model, tokenizer, rows, batch_size=len(rows))
    tokens = [scored_targets(r, enc_dec) for r in rows]
    combined = 0.0
    for r in range(2):
        part = distributed.shard(list(range(len(rows))), distributed.DistInfo(rank=r, world_size=2))
        share = sum(tokens[i] for i in part) / sum(tokens)
        combined += share * validation_loss(model, tokenizer, [rows[i] for i in part], batch_size=len(part))
    assert combined == pytest.approx(whole, rel=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_callback_refuses_a_ddp_wrapper_that_cannot_follow_the_selections(tmp_path, tiny_models):
    from transformers import TrainingArguments

    from greencore.callback import _check_ddp_follows_selections

    model, _ = tiny_models("tiny-gpt2")
    args = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    _check_ddp_follows_selections(TrainingArguments(**args), model)  # the Trainer's default: find unused
    _check_ddp_follows_selections(TrainingArguments(**args, ddp_find_unused_parameters=True), model)
    for bad in ({"ddp_find_unused_parameters": False}, {"gradient_checkpointing": True},
                {"ddp_find_unused_parameters": True, "ddp_static_graph": True}):
        with pytest.raises(ValueError, match="ddp_find_unused_parameters=True"):
            _check_ddp_follows_selections(TrainingArguments(**args, **bad), model)


# ---------------------------------------------------------------------------------------- the 2-rank launch


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """Launch this file on 2 ranks once; each rank leaves rank{r}.pt with what it saw, then rank 1 crashes."""
    out = tmp_path_factory.mktemp("ddp")
    started = time.perf_counter()
    proc = _torchrun(str(HERE), str(out))
    seconds = time.perf_counter() - started
    log = proc.stdout[-4000:] + proc.stderr[-8000:]
    assert all((out / f"rank{r}.pt").exists() for r in range(2)), log
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    return out, results, (proc.returncode, proc.stdout + proc.stderr, seconds)


def test_a_tensor_unfrozen_after_wrapping_is_all_reduced_once_re_wrapped(launched):
    _, (a, b), _ = launched
    a, b = a["ddp"], b["ddp"]
    mean = (a["local"] + b["local"]) / 2
    assert not torch.allclose(a["local"], b["local"])  # the ranks' data differ
    # under the wrapper built while it was frozen, the tensor's gradient stays local: the ranks would drift apart
    assert torch.equal(a["stale"], a["local"]) and torch.equal(b["stale"], b["local"])
    # a tensor that required grad at wrap time was averaged all along
    assert torch.equal(a["wrapped_at_start"], b["wrapped_at_start"])
    # re-wrapped after unfreezing: averaged over the ranks, bit-identical on both
    assert torch.equal(a["rewrapped"], b["rewrapped"])
    assert torch.allclose(a["rewrapped"], mean, atol=1e-6)


def test_engine_ranks_train_identical_tensors_and_match_a_single_process_run(launched, tmp_path):
    from safetensors.torch import load_file

    from greencore.training import TrainConfig, train
    from greencore.records import checkpoints, load_run

    out, (a, b), _ = launched
    ea, eb = a["engine"], b["engine"]
    # bit-identical weights and the same trainable set at every step on both ranks
    assert ea["weights"].keys() == eb["weights"].keys()
    assert all(torch.equal(ea["weights"][k], eb["weights"][k]) for k in ea["weights"])
    assert ea["trainable"] == eb["trainable"] and len(ea["trainable"]) == ENGINE["max_steps"]
    assert ea["masks"] == eb["masks"] and len(ea["masks"]) == 3  # a selection before each step
    assert ea["losses"] == eb["losses"]
    # a re-selection unfroze a tensor that was frozen before: DDP had to be re-wrapped for it
    phases = [set(t) for t in ea["trainable"]]
    assert any(later - earlier for earlier, later in zip(phases, phases[1:]))
    assert ea["ddp_wraps"] == 1 + sum(p != q for p, q in zip(phases, phases[1:]))  # re-wrapped on each change only

    # the same global batches on one process: same selections, same losses up to summation order
    single = train(TrainConfig(**ENGINE), tmp_path / "single")
    record = load_run(tmp_path / "single")
    assert [s["mask"] for s in record.selections] == ea["masks"]
    single_losses = [m["loss"] for m in record.metrics if m["type"] == "train"]
    assert ea["losses"] == pytest.approx(single_losses, rel=1e-5)
    # summation order differs (two half-batch gradients averaged vs one): weights agree to within 1% of one Adam step,
    # except where a gradient is near Adam's eps (1e-8) and rounding moves g / (|g| + eps): at most 10% of a step there
    reference = load_file(str(checkpoints(tmp_path / "single")[-1] / "model.safetensors"))
    for name, value in reference.items():
        diff = (ea["weights"][name] - value).abs()
        assert int((diff > 1e-2 * ENGINE["lr"]).sum()) <= max(1, value.numel() // 10_000), name
        assert float(diff.max()) <= 0.1 * ENGINE["lr"], name
    dist_summary = json.loads((out / "run" / "summary.json").read_text())
    assert dist_summary["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    # the two ranks' half batches cost what the whole batches cost on one process (up to padding)
    assert dist_summary["flops_training"] == pytest.approx(single["flops_training"], rel=0.05)


def test_a_classification_run_on_two_ranks_matches_one_process(launched, tmp_path):
    """Each example weighs one target: the ranks' shards give one process's losses, selections, scores and weights."""
    from greencore.training import TrainConfig, train

    _, (a, b), _ = launched
    ca, cb = a["classify"], b["classify"]
    assert ca["losses"] == cb["losses"] and ca["masks"] == cb["masks"] and len(ca["masks"]) == 3
    assert all(torch.equal(ca["weights"][k], cb["weights"][k]) for k in ca["weights"])
    single = train(TrainConfig(**CLASSIFY), tmp_path / "single")
    assert ca["losses"] == pytest.approx([float(x) for x in _train_losses(tmp_path / "single")], rel=1e-5)
    assert ca["summary"]["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
    for key in ("accuracy", "macro_f1", "majority_accuracy", "validation_accuracy"):
        assert ca["summary"][key] == pytest.approx(single[key]), key
    from safetensors.torch import load_file

    from greencore.records import checkpoints

    reference = load_file(str(checkpoints(tmp_path / "single")[-1] / "model.safetensors"))
    for name, value in reference.items():  # summation order differs: within a tenth of one Adam step
        assert float((ca["weights"][name] - value).abs().max()) <= 0.1 * CLASSIFY["lr"], name


def test_issue_18_options_keep_the_ranks_identical_and_match_one_process(launched, tmp_path):
    """probe="step" with importance_ema and rho_shift: the step's gradients DDP averaged score the same selection
    under the same falling budget on every rank as on one process; split_tied: the head's use trains alone on both ranks, identically."""
    from greencore.training import TrainConfig, train
    from greencore.records import load_run

    _, (a, b), _ = launched
    for name in ("options", "tied"):
        assert a[name]["losses"] == b[name]["losses"] and a[name]["masks"] == b[name]["masks"], name
        assert all(torch.equal(a[name]["weights"][k], b[name]["weights"][k]) for k in a[name]["weights"]), name
    assert all(m[0] and not m[-1] for m in a["tied"]["masks"])  # lm_head.weight's use, not the embedding's
    single = train(TrainConfig(**OPTIONS), tmp_path / "single")
    record = load_run(tmp_path / "single")
    assert [s["mask"] for s in record.selections] == a["options"]["masks"] and len(record.selections) == 3
    assert [s["rho"] for s in record.selections] == pytest.approx([0.5 + 0.1 * (1 - (2 * a + 1) / 3) for a in range(3)])
    assert a["options"]["losses"] == pytest.approx(_train_losses(tmp_path / "single"), rel=1e-5)
    assert a["options"]["summary"]["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)


def _train_losses(path: Path) -> list[float]:
    from greencore.records import load_run

    return [m["loss"] for m in load_run(path).metrics if m["type"] == "train"]


def test_energy_is_summed_over_the_ranks(launched):
    out, _, _ = launched
    energy = json.loads((out / "run" / "summary.json").read_text())["energy"]
    assert len(energy["per_rank"]) == 2
    for phase in ("training", "evaluation", "accounting"):
        for key in ("kwh", "co2_kg"):
            assert energy[phase][key] == pytest.approx(sum(r[phase][key] for r in energy["per_rank"]), rel=1e-12)
    assert all(r["training"]["kwh"] > 0 for r in energy["per_rank"])  # each rank tracked its own process
    rows = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in rows if r["type"] == "train"][-1]
    assert 0 < last["energy_kwh"] <= energy["training"]["kwh"]  # live rows: both ranks' training energy so far


def test_engine_resumes_a_distributed_run_exactly(launched):
    """Rank 0 alone is asked to stop after step 1; every rank stops there, and the resumed run ends exactly as
    the uninterrupted one."""
    _, (a, b), _ = launched
    for rank in (a, b):
        cut, whole = rank["resume"], rank["engine"]
        assert cut["stopped_status"] == "interrupted" and cut["stopped_at"] == 1
        assert cut["losses"] == whole["losses"] and cut["masks"] == whole["masks"]
        assert all(torch.equal(cut["weights"][k], whole["weights"][k]) for k in whole["weights"])


def test_engine_records_are_written_once_by_rank_0(launched):
    from greencore.training import TrainConfig
    from greencore.records import checkpoints, load_run

    out, (a, b), _ = launched
    run = load_run(out / "run")
    assert run.config == TrainConfig(**ENGINE).to_dict()  # the CLI ran the configuration the reference run uses
    train_rows = [m for m in run.metrics if m["type"] == "train"]
    assert [m["step"] for m in train_rows] == list(range(1, ENGINE["max_steps"] + 1))  # once, not once per rank
    assert [m["loss"] for m in train_rows] == a["engine"]["losses"]
    assert len(run.selections) == 3 == run.summary["selections"]
    s = run.summary
    assert s["status"] == "finished" and s["world_size"] == 2 and len(s["flops_per_rank"]) == 2
    assert s["flops_total"] == pytest.approx(sum(s["flops_per_rank"]))
    assert s["flops_total"] == pytest.approx(s["flops_training"] + s["flops_selection"])
    d = s["distributed"]
    assert d["global_batch"] == 8 and d["rank_batches"] == [4, 4]
    assert s["flops_full_equivalent"] == pytest.approx(sum(d["flops_full_per_rank"]))
    for flops, full, ratio in zip(s["flops_per_rank"], d["flops_full_per_rank"], s["flops_ratio_per_rank"]):
        assert ratio == pytest.approx(flops / full)
    assert train_rows[-1]["flops"] == pytest.approx(s["flops_total"])
    assert sum(run.selections[0]["flops_overhead_per_rank"]) == run.selections[0]["flops_overhead"]
    state = json.loads((checkpoints(out / "run")[-1] / "state.json").read_text())
    assert state["world_size"] == 2 and len(state["ranks"]) == 2 and state["weights_fingerprint"]
    assert a["engine"]["summary"] == s == b["engine"]["summary"]  # every rank gets the summary rank 0 wrote
    assert not list((out / "run").glob("**/.*.tmp"))


def test_callback_under_ddp_keeps_ranks_identical(launched):
    _, (a, b), _ = launched
    ca, cb = a["callback"], b["callback"]
    assert ca["selections"] == cb["selections"] and [s["step"] for s in ca["selections"]] == [0, 2]
    assert ca["trainable"] == cb["trainable"]
    assert all(torch.equal(ca["weights"][k], cb["weights"][k]) for k in ca["weights"])
    phases = [set(s["trainable"]) for s in ca["selections"]]
    assert phases[1] - phases[0], "the second selection should unfreeze a tensor frozen by the first"
    never = set(ca["weights"]) - phases[0] - phases[1]
    assert never and all(torch.equal(ca["weights"][n], ca["initial"][n]) for n in never)
    trained = phases[0] | phases[1]
    assert all(not torch.equal(ca["weights"][n], ca["initial"][n]) for n in trained)


def test_a_crashing_rank_fails_the_launch_instead_of_hanging(launched):
    """Rank 1 raises right after the first selection of a run; rank 0, waiting in the next collective, must fail
    too (gloo reports the closed connection; torchrun stops the other workers) and the launcher exit non-zero."""
    out, _, (returncode, output, seconds) = launched
    assert returncode != 0
    assert "RuntimeError: injected failure on rank 1" in output
    assert "ChildFailedError" in output  # torchrun's report of the failed rank
    assert (out / "crash" / "config.json").exists()  # rank 0 had started the run
    assert seconds < LAUNCH_TIMEOUT_S


# ---------------------------------------------------------------------------------------- accelerate


def test_greencore_train_under_accelerate_launch(tmp_path):
    pytest.importorskip("accelerate")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "greencore.cli", "train",
           "--model", "tiny-gpt2", "--scheme", "green:0.5", "--interval", "1", "--interval-unit", "step",
           "--probe-batches", "1", "--max-steps", "2", "--max-train-examples", "48", "--max-eval-examples", "4",
           "--batch-size", "4", "--max-source-tokens", "48", "--max-target-tokens", "24", "--no-rouge",
           "--device", "cpu", "--out", str(out)]
    proc = _launch(cmd, HF_HOME=str(tmp_path / "hf"))  # HF_HOME: no accelerate config file of this machine
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    from greencore.records import checkpoints, load_run

    run = load_run(out)
    assert run.summary["world_size"] == 2 and run.summary["steps"] == 2 and run.summary["status"] == "finished"
    assert [m["step"] for m in run.metrics if m["type"] == "train"] == [1, 2]
    assert len(run.selections) == 2
    state = json.loads((checkpoints(out)[-1] / "state.json").read_text())
    assert state["world_size"] == 2


# ---------------------------------------------------------------------------------------- the launched ranks


def _ddp_unfreeze_check() -> dict:
    """Grads of a tensor frozen when DDP was built and unfrozen afterwards: under that wrapper, and re-wrapped."""
    info = distributed.setup()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(100 + info.rank))  # each rank its own data
    names = [n for n, _ in model.named_parameters()]

    def grads(module) -> dict:
        model.zero_grad(set_to_none=True)
        module(x).pow(2).sum().backward()
        return {"0.weight": model[0].weight.grad.clone(), "2.weight": model[2].weight.grad.clone()}

    local = grads(model)["0.weight"]
    model[0].weight.requires_grad_(False)
    stale_ddp = distributed.data_parallel(model, candidates=names, device=torch.device("cpu"))
    model[0].weight.requires_grad_(True)  # unfrozen by a "re-selection", wrapper unchanged
    stale = grads(stale_ddp)
    del stale_ddp
    fresh = grads(distributed.data_parallel(model, candidates=names, device=torch.device("cpu")))
    return {"local": local, "stale": stale["0.weight"], "wrapped_at_start": stale["2.weight"],
            "rewrapped": fresh["0.weight"]}


def _engine_run(out: Path) -> dict:
    """`greencore train` through its CLI entry point, watching each rank's trainer through `Run.events`."""
    from greencore import cli
    from greencore.training import Run

    seen = {"losses": [], "trainable": [], "masks": []}
    events = Run.events

    def watched(run):
        for event in events(run):
            state = run.state
            if event["type"] == "selection":
                seen["masks"].append(event["mask"])
            elif event["type"] == "train":
                seen["losses"].append(event["loss"])
                seen["trainable"].append(sorted(n for n, p in state.model.named_parameters() if p.requires_grad))
            elif event["type"] == "done":
                seen["weights"] = {n: t.detach().clone() for n, t in state.model.state_dict().items()}
                seen["ddp_wraps"] = state.account.counters.ddp_wraps
                seen["summary"] = event["summary"]
            yield event

    Run.events = watched
    try:
        assert cli.main(_cli_args(ENGINE, out / "run")) == 0
    finally:
        Run.events = events
    return seen


def _resume_run(out: Path) -> dict:
    """The engine run again, asked to stop after step 1 on rank 0 only, then resumed on both ranks."""
    from greencore.training import Run, TrainConfig

    seen: dict = {"losses": [], "masks": []}
    run = Run(TrainConfig(**ENGINE), out / "cut")
    for event in run.events():
        if event["type"] == "train":
            seen["losses"].append(event["loss"])
            if event["step"] == 1 and distributed.current().rank == 0:
                run.stop("interrupted")
        elif event["type"] == "selection":
            seen["masks"].append(event["mask"])
    seen["stopped_status"], seen["stopped_at"] = run.summary["status"], run.summary["steps"]
    return _follow(Run.resume(out / "cut"), seen)


def _state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def _follow(run, seen: dict, weights=_state_dict) -> dict:
    """Run to the end, adding its losses and selections to `seen`, then its final `weights(model)` and summary."""
    for event in run.events():
        if event["type"] == "train":
            seen["losses"].append(event["loss"])
        elif event["type"] == "selection":
            seen["masks"].append(event["mask"])
        elif event["type"] == "done":
            seen["weights"], seen["summary"] = weights(run.state.model), event["summary"]
    return seen


CLASSIFY = dict(task="classification", model="tiny-llama", scheme="green:0.5", interval=1, interval_unit="step",
                max_steps=3, probe_batches=1, max_train_examples=48, max_eval_examples=10, batch_size=8,
                max_source_tokens=32, lr=1e-3, seed=0, device="cpu", energy=False)


def _classification_run(out: Path) -> dict:
    """A classification run on both ranks: its losses, selections, scores and final weights."""
    from greencore.training import Run, TrainConfig

    return _follow(Run(TrainConfig(**CLASSIFY), out / "classify"), {"losses": [], "masks": []})


# issue 18's options: scores from the step a selection precedes, averaged over the selections, under a falling budget
# (tiny-llama: no dropout,
# so the ranks compute what one process computes); and a tied weight split into its uses (tiny-gpt2 has a tied head)
OPTIONS = dict(ENGINE, probe="step", importance_ema=0.5, rho_shift=0.1, energy=False)
TIED = dict(ENGINE, model="tiny-gpt2", split_tied=True, metric="magnitude", rho=0.45, scheme="green", energy=False)


def _options_runs(out: Path) -> dict:
    from greencore.training import Run, TrainConfig

    return {name: _follow(Run(TrainConfig(**cfg), out / name), {"losses": [], "masks": []})
            for name, cfg in (("options", OPTIONS), ("tied", TIED))}


def _callback_run(out: Path) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from greencore.callback import GreenTrainerCallback
    from greencore.models import load_model

    model, _ = load_model("tiny-opt")
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(16):
        ids = torch.randint(5, 4096, (16,), generator=g)
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})

    class Recorder(TrainerCallback):
        def __init__(self) -> None:
            self.trainable: list[list[str]] = []

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            self.trainable.append(sorted(n for n, p in model.named_parameters() if p.requires_grad))

    green, recorder = GreenTrainerCallback(rho=0.5, interval_steps=2, probe_batches=1, metric="taylor"), Recorder()
    args = TrainingArguments(output_dir=str(out / "hf"), report_to=[], use_cpu=True, save_strategy="no", max_steps=4,
                             per_device_train_batch_size=2, logging_steps=1, disable_tqdm=True, learning_rate=1e-3)
    Trainer(model=model, args=args, train_dataset=data, data_collator=default_data_collator,
            callbacks=[green, recorder]).train()
    return {"selections": green.selections, "trainable": recorder.trainable, "initial": initial,
            "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


def _crash(out: Path) -> None:
    from greencore.training import Run, TrainConfig

    run = Run(TrainConfig(**ENGINE), out / "crash")
    for event in run.events():
        if distributed.current().rank == 1:
            raise RuntimeError("injected failure on rank 1")


def _main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    results = {"ddp": _ddp_unfreeze_check()}
    results["engine"] = _engine_run(out)
    results["resume"] = _resume_run(out)
    results["callback"] = _callback_run(out)
    results["classify"] = _classification_run(out)
    results.update(_options_runs(out))
    torch.save(results, out / f"rank{rank}.pt")
    _crash(out)


if __name__ == "__main__":
    _main(Path(sys.argv[1]))
