"""Training runs in background threads, one directory each, shared by every session of the app process.

A session only holds the directories of the runs it started; the handles live here, keyed by directory, so a
session can stop its own runs and the live views can tell a run that is still training from one that ended.
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

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._drive, name=f"run {self.run.out.name}", daemon=True)

    @property
    def running(self) -> bool:
        """Whether its thread is still training (or loading)."""
        return self.thread.is_alive()

    @property
    def status(self) -> str:
        """starting, running, finished, stopped or failed."""
        if self.error is not None:
            return "failed"
        return "starting" if self.run.status == "created" else self.run.status

    def stop(self) -> None:
        """Ask the run to end after its current step, with a checkpoint and a summary."""
        self.run.stop()

    def _drive(self) -> None:
        try:
            for _ in self.run.events():
                pass
        except Exception as err:  # shown to the user; the traceback goes to the server log
            log.exception("run %s failed", self.run.out)
            self.error = str(err) or type(err).__name__


_runs: dict[str, BackgroundRun] = {}
_lock = threading.Lock()


def start(config: TrainConfig, runs_dir: Path) -> BackgroundRun:
    """Start `config` in a new, uniquely named directory under `runs_dir`; without a label it gets
    "<scheme> #<id>", the id being the end of the directory name."""
    token = secrets.token_hex(3)
    out = Path(runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.scheme.replace(':', '-')}-{token}"
    handle = BackgroundRun(Run(replace(config, label=config.label or f"{config.scheme} #{token}"), out))
    with _lock:
        _runs[str(out)] = handle
    handle.thread.start()
    return handle


def get(path: str) -> BackgroundRun | None:
    """The handle of a run this process started, or None (a run from the CLI or an earlier app process)."""
    with _lock:
        return _runs.get(path)
