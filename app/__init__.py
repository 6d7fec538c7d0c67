"""The greencore Gradio app, started by `greencore app`; installed as `greencore_app` (see `main`)."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere in the app
