"""A figure as raw notebook outputs, for redrawing it in place through an IPython display handle.

A Plotly figure displays itself and bypasses IPython's display handles, so a notebook that redraws one figure (a
live loss curve, a slider) passes IPython the outputs as raw data instead: Plotly JSON (JupyterLab), HTML that loads
plotly.js from its CDN (classic Notebook, nbviewer) and, when the default renderers include "png", a static image
(GitHub's viewer, which runs no JavaScript). Static images need `kaleido` and a Chromium.
"""

from __future__ import annotations

import base64
import json

import plotly.graph_objects as go
import plotly.io as pio

__all__ = ["figure_bundle"]


def figure_bundle(fig: go.Figure, static: bool | None = None) -> dict[str, object]:
    """The mime bundle `fig.show()` would write under `plotly.io.renderers.default`; the PNG image is in it when the
    renderers include "png" (`static=None`) or as `static` says (False for a figure redrawn many times a second)."""
    bundle: dict[str, object] = {
        "application/vnd.plotly.v1+json": json.loads(pio.to_json(fig)),
        "text/html": pio.to_html(fig, full_html=False, include_plotlyjs="cdn"),
    }
    if static is None:
        static = "png" in str(pio.renderers.default).split("+")
    if static:
        bundle["image/png"] = base64.b64encode(pio.to_image(fig, format="png")).decode("ascii")
    return bundle
