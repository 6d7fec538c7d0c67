"""Training runs in background threads, one directory each, shared by every session of the app process.

A session only holds the directories of the runs it started; the handles live here, keyed by directory, so a
session can stop its own runs and the live views can tell a run that is still training from one that ended.

Runs train one at a time, in the order they were started; the others wait in a visible queue ("queued, 2 ahead").
A run seeds and draws from the process-wide RNGs (torch, numpy, random: dropout has no per-call generator), so two
runs training at once would interleave their draws and neither would be reproducible; on a CPU they would also
only share its cores. One at a time, a run started beside another gives the same numbers as the run alone.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from greencore import Run, TrainConfig

__all__ = ["BackgroundRun", "get", "start"]

log = logging.getLogger(__name__)


@dataclass
class BackgroundRun:
    """A `Run` driven by a daemon thread; `error` holds the message of an exception that ended it."""

    run: Run
    thread: threading.Thread = field(init=False)
    error: str | None = None

    cancelled: bool = False

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._drive, name=f"run {self.run.out.name}", daemon=True)

    @property
    def running(self) -> bool:
        """Whether its thread is still waiting, loading or training."""
        return self.thread.is_alive()

    @property
    def ahead(self) -> int:
        """How many runs train before this one starts (0 once it is its turn)."""
        with _turn:
            return _queue.index(self) if self in _queue else 0

    @property
    def status(self) -> str:
        """queued, starting, running, finished, stopped, cancelled or failed."""
        if self.error is not None:
            return "failed"
        if self.cancelled:
            return "cancelled"
        if self.run.status == "created":
            ahead = self.ahead
            return f"queued, {ahead} ahead" if ahead else "starting"
        return self.run.status

    def stop(self) -> None:
        """Ask the run to end after its current step, with a checkpoint and a summary; a queued run is cancelled
        (it never starts and writes nothing)."""
        with _turn:
            if self.run.status == "created" and _queue and _queue[0] is not self:
                self.cancelled = True
                _queue.remove(self)
                _turn.notify_all()
                return
        self.run.stop()

    def _drive(self) -> None:
        with _turn:
            _turn.wait_for(lambda: self.cancelled or _queue[0] is self)
        if self.cancelled:
            return
        try:
            for _ in self.run.events():
                pass
        except Exception as err:  # shown to the user; the traceback goes to the server log
            log.exception("run %s failed", self.run.out)
            self.error = str(err) or type(err).__name__
        finally:
            with _turn:
                _queue.remove(self)
                _turn.notify_all()


_runs: dict[str, BackgroundRun] = {}
_lock = threading.Lock()
_queue: list[BackgroundRun] = []  # runs waiting or training, in start order: the first one trains
_turn = threading.Condition()  # guards _queue; notified when the training run ends or a queued one is cancelled


def start(config: TrainConfig, runs_dir: Path) -> BackgroundRun:
    """Start `config` in a new, uniquely named directory under `runs_dir`; without a label it gets
    "<scheme> #<id>", the id being the end of the directory name."""
    token = secrets.token_hex(3)
    out = Path(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.scheme.replace(':', '-')}-{token}"
    handle = BackgroundRun(Run(replace(config, label=config.label or f"{config.scheme} #{token}"), out))
    with _lock:
        _runs[str(out)] = handle
    with _turn:
        _queue.append(handle)
    handle.thread.start()
    return handle


def get(path: str) -> BackgroundRun | None:
    """The handle of a run this process started, or None (a run from the CLI or an earlier app process)."""
    with _lock:
        return _runs.get(path)
