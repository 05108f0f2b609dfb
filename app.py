"""specviz on Hugging Face Spaces (or locally): `python app.py`.

Builds the Gradio app and launches it. Honours GRADIO_SERVER_NAME (default 0.0.0.0) and
PORT / GRADIO_SERVER_PORT (default: Gradio's 7860 or the first free port after it). Optional:
SPECVIZ_MODELS (comma-separated model names or directories for the model dropdown) and
SPECVIZ_TORCH_THREADS (torch CPU threads, default 1).
"""

import os

from specviz.ui import build_app, launch_kwargs

_models = [m.strip() for m in os.environ.get("SPECVIZ_MODELS", "").split(",") if m.strip()] or None
demo = build_app(_models, preload=True, torch_threads=int(os.environ.get("SPECVIZ_TORCH_THREADS", "1")))

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
