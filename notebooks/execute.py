"""Execute the teaching notebooks with nbclient, as the test suite does (QUICK=1) or for the committed outputs.

    python notebooks/execute.py                 # full mode: run every notebook and save its outputs in place
    python notebooks/execute.py 02 04           # only the notebooks whose names start with 02 or 04
    python notebooks/execute.py --quick         # quick mode (tiny models, a few steps); outputs are not saved

Notebooks run with the working directory `notebooks/` and the kernel `python3` of the Python that runs this script
(run it with the project's virtualenv). Notebook 04 writes its training runs into `$GREENCORE_NOTEBOOK_OUT`
(default `notebooks/runs/`, which git ignores). Execution timestamps are not recorded, so a re-run only changes
the outputs.

Figures are saved with the Plotly renderer "plotly_mimetype+notebook_connected+png": Plotly JSON, which JupyterLab
draws offline (the plotly package ships its JupyterLab extension), HTML that loads plotly.js from its CDN for the
classic Notebook and nbviewer, and a static PNG image for GitHub's notebook preview, which runs no JavaScript. The
images need `kaleido` (in the dev extra) and a Chromium on the PATH. Quick mode leaves the PNG out (the tests need
no browser); `PLOTLY_RENDERER` overrides the renderer in either mode.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
NOTEBOOKS = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute_notebook(
    path: str | os.PathLike,
    *,
    quick: bool,
    out_dir: str | os.PathLike | None = None,
    save: bool = False,
    timeout: int = 1800,
) -> float:
    """Run every cell of the notebook at `path` in a fresh kernel; return the wall time in seconds.

    Raises nbclient's CellExecutionError (with the failing cell and its traceback) on the first error. `out_dir`
    becomes `$GREENCORE_NOTEBOOK_OUT` for the kernel; with `save` the executed notebook overwrites `path`.
    """
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    env = dict(os.environ, QUICK="1" if quick else "0")
    env.setdefault("PLOTLY_RENDERER", "plotly_mimetype+notebook_connected" + ("" if quick else "+png"))
    if out_dir is not None:
        env["GREENCORE_NOTEBOOK_OUT"] = str(out_dir)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    started = time.perf_counter()
    client.execute(env=env)
    seconds = time.perf_counter() - started
    if save:
        nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="name prefixes of the notebooks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="QUICK=1: tiny models, a few steps; nothing is saved")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed for one cell (default 1800)")
    args = parser.parse_args(argv)
    chosen = [p for p in NOTEBOOKS if not args.names or any(p.name.startswith(n) for n in args.names)]
    if not chosen:
        print(f"no notebook matches {args.names}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for path in chosen:
            out_dir = Path(tmp) / "runs" if args.quick else None
            seconds = execute_notebook(path, quick=args.quick, out_dir=out_dir, save=not args.quick,
                                       timeout=args.timeout)
            size = path.stat().st_size / 1e6
            print(f"{path.name}: {seconds:.1f} s" + ("" if args.quick else f", saved ({size:.2f} MB)"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
