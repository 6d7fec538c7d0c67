"""The greencore Gradio app, started by `greencore app`: see `app.main`."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported anywhere in the app
