"""The training loop: set up, (re-)select, step, evaluate, checkpoint, summarise, top to bottom.

Use it as `train(config, out)`, or iterate `Run(config, out).events()` to follow a run as it happens (the app and
the notebooks do), and call `Run.stop()` from another thread to end it cleanly with a checkpoint.

Under `torchrun` / `accelerate launch` (WORLD_SIZE > 1) every process runs the same loop; the only differences are
inside the helpers it calls (see `training.distributed`): `batch_size` stays the global batch, split across the
ranks; every rank trains the same tensors; rank 0 alone writes the run directory; FLOPs are counted per rank and
summed. Every rank's `train` returns the same summary.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..records import (DoneEvent, ResumeEvent, RunWriter, Summary, check_run_directory, latest_checkpoint, read_json,
                       remove_run)
from ..importance import GRADIENT_METRICS
from . import checkpoint, distributed
from .checkpoint import Position
from .config import TrainConfig, flag
from .evaluation import final_evaluation, validate
from .setup import RunState, setup
from .step import reselect, select_in_step, train_step
from .summary import PeakMemory, write_summary

__all__ = ["Run", "train"]


def train(config: TrainConfig, out: str | Path, *, overwrite: bool = False) -> Summary:
    """Run to the end and return the summary (also written to `out/summary.json`)."""
    run = Run(config, out, overwrite=overwrite)
    for _ in run.events():
        pass
    return run.summary


class Run:
    """One training run writing to its directory; iterate `events()` to drive it.

    `Run.resume(out)` continues an interrupted run from its latest checkpoint; under the same seed the result is
    the same as that of an uninterrupted run. While `events()` runs, `state` holds the live `RunState` (model,
    data, optimizer, profile); it is released when the run ends.
    """

    def __init__(self, config: TrainConfig, out: str | Path, *, overwrite: bool = False, _resume: bool = False):
        self.config = config
        self.out = Path(out)
        self.summary: Summary = {}
        self.status = "created"
        self.state: RunState | None = None
        self.dist = distributed.setup()
        self._stop = threading.Event()
        self._stop_reason = "stopped"
        self._resume = _resume
        self._overwrite = overwrite
        if not _resume:
            distributed.on_main(lambda: check_run_directory(self.out, overwrite=overwrite), self.dist)

    @classmethod
    def resume(cls, out: str | Path, settings: Mapping[str, Any] | None = None) -> "Run":
        """A run that continues the interrupted run in `out` from its latest checkpoint.

        A resumed run continues exactly as it was configured: `settings` (the flags given beside --resume) must
        agree with the recorded config, and a ValueError names each one that does not. A finished run is not trained
        again: its `status` is "finished" at once, `summary` is the recorded one and `events()` yields nothing.
        """
        out = Path(out)

        def read() -> tuple[dict, dict | None]:
            record = out / "config.json"
            if not record.exists():
                raise ValueError(f"cannot resume {out}: it holds no run (no config.json)")
            config = read_json(record)
            summary = read_json(out / "summary.json") if (out / "summary.json").exists() else None
            if not summary or summary.get("status") != "finished":
                latest_checkpoint(out)  # a missing or damaged checkpoint fails now, naming the file
            return config, summary

        recorded, summary = distributed.on_main(read, distributed.setup())
        config = TrainConfig.from_dict(recorded)
        _check_settings(config, settings or {}, out)
        run = cls(config, out, _resume=True)
        if summary and summary.get("status") == "finished":
            run.summary, run.status = summary, "finished"
        return run

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to stop after the current step; it writes a checkpoint and a summary marked `reason`
        ("stopped", or "interrupted" for Ctrl-C). Safe to call from another thread or a signal handler."""
        self._stop_reason = reason
        self._stop.set()

    def events(self) -> Iterator[dict]:
        """Train, yielding each event (resume, train step, eval, selection, checkpoint, done) as it is recorded."""
        if self.status == "finished":  # a finished run resumed: nothing to do, and nothing is written
            return
        self.status = "running"
        try:
            yield from self._loop()
        except BaseException:
            if self.status == "running":
                self.status = "failed"
            raise
        finally:
            if self.state is not None:
                self.state.energy.close()
            self.state = None  # a finished run's model is not kept alive by its handle

    def _loop(self) -> Iterator[dict]:
        c = self.config
        checkpoint.seed_everything(c.seed)
        s = self.state = setup(c, self.dist, RunWriter(self.out, enabled=self.dist.is_main))
        if self._resume:
            path, at = checkpoint.restore(s, self.out)
            yield ResumeEvent(type="resume", checkpoint=str(path), step=at.step, epoch=at.epoch,
                              total_steps=s.data.total_steps)
        else:  # the set-up succeeded: only now may an old run be replaced
            at = Position()
            if self._overwrite:
                distributed.on_main(lambda: remove_run(self.out), self.dist)
            s.writer.write_config(c.to_dict())
            s.writer.write_profile(s.profile)
        step = at.step
        s.energy.start()
        s.memory = PeakMemory(s.device)
        with s.memory:
            for epoch in range(at.epoch, c.epochs):
                for index, (batch, share) in enumerate(s.data.epoch(epoch)):
                    if epoch == at.epoch and index < at.index:
                        continue  # resumed mid-epoch: these batches were trained before the checkpoint
                    due = self._selection_due(s, epoch, index, step)
                    if due and self._probes_on_step(s):  # the step scores the tensors, then trains the chosen
                        yield from select_in_step(s, batch, share, epoch, index, step)
                    else:
                        if due:
                            yield reselect(s, epoch, step)
                        yield train_step(s, batch, share, epoch, index, step)
                    step += 1
                    if self._stop_requested() or step >= s.data.total_steps:
                        break
                if self._stop_requested() and index + 1 < s.data.steps_per_epoch:
                    yield checkpoint.save(s, f"step-{step}", Position(epoch, index + 1, step))
                    yield self._finish(s, self._stop_reason, step)
                    return
                yield validate(s, epoch + 1, step)
                yield checkpoint.save(s, f"epoch-{epoch + 1}", Position(epoch + 1, 0, step))
                if self._stop_requested():
                    yield self._finish(s, self._stop_reason, step)
                    return
                if step >= s.data.total_steps:
                    break
        scores = yield from final_evaluation(s, step)
        yield self._finish(s, "finished", step, scores)

    def _selection_due(self, s: RunState, epoch: int, index: int, step: int) -> bool:
        c = self.config
        if not s.scheme.reselects:
            return False
        if c.interval_unit == "step":
            return step % c.interval == 0
        return index == 0 and epoch % c.interval == 0

    def _probes_on_step(self, s: RunState) -> bool:
        """Whether a re-selection takes its gradients from the step it precedes (`probe="step"`, a gradient metric)."""
        return self.config.probe == "step" and s.scheme.importance_metric(self.config.metric) in GRADIENT_METRICS

    def _stop_requested(self) -> bool:
        """Whether to stop; under DDP a collective, true on every rank once any rank was asked to stop."""
        stop = distributed.any_rank(self._stop.is_set(), self.dist)
        if stop:  # every rank takes the reason of the lowest rank that was asked to stop
            asked = self._stop_reason if self._stop.is_set() else None
            self._stop_reason = next(r for r in distributed.all_gather_object(asked, self.dist) if r is not None)
            self._stop.set()
        return stop

    def _finish(self, s: RunState, status: str, step: int, scores: dict | None = None) -> DoneEvent:
        self.summary = write_summary(s, status, step, **(scores or {}))
        self.status = status
        return {"type": "done", "status": status, "step": step, "summary": self.summary}


def _check_settings(config: TrainConfig, settings: Mapping[str, Any], out: Path) -> None:
    """Refuse settings that differ from the run's recorded config, naming each flag with both values."""
    if not settings:
        return
    recorded = config.to_dict()
    if settings.keys() & {"rho", "k"} and "scheme" not in settings:
        recorded["scheme"] = config.spec.name  # else the parameter written in the recorded scheme would win
    asked = TrainConfig.from_dict({**recorded, **settings})
    differ = [f"{flag(name)} {getattr(asked, name)} (the run has {getattr(config, name)})"
              for name in config.to_dict() if getattr(asked, name) != getattr(config, name)]
    if differ:
        raise ValueError(f"--resume continues {out} as recorded in its config.json; these settings conflict with it: "
                         f"{', '.join(differ)}. Drop them, or start a new run with another --out")
