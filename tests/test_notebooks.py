"""The teaching notebooks: each one runs end to end in quick mode, and the committed copies hold a full run's outputs."""

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
MAX_BYTES = 5_000_000


def _executor():
    spec = importlib.util.spec_from_file_location("notebook_execute", NOTEBOOK_DIR / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_five_notebooks_are_there():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_quick_mode(path, tmp_path):
    # a fresh kernel of this Python, cwd notebooks/, QUICK=1, training runs written under tmp_path; any error fails
    _executor().execute_notebook(path, quick=True, out_dir=tmp_path / "runs", timeout=240)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_holds_a_full_run(path):
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    missing = [i for i, c in enumerate(code) if c.execution_count is None]
    assert not missing, f"code cells {missing} of {path.name} were not run: run `python notebooks/execute.py`"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name} was saved with an error: {errors[0].ename}: {errors[0].evalue}"
    first = "".join(o.get("text", "") for o in code[0].outputs)
    assert "mode: full" in first, f"{path.name} holds the outputs of a quick run, not of a full one"
    assert not any("execution" in c.metadata for c in code), "execution timestamps should not be committed"
    plotly = [o for c in code for o in c.outputs if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert plotly, f"{path.name} has no saved Plotly figure"
    for out in plotly:
        json.dumps(out.data["application/vnd.plotly.v1+json"])  # plain JSON that JupyterLab can draw offline
