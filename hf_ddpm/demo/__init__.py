"""The demo: a Gradio app over trained pipelines (`app`), what its tabs do (`actions`), the frames of a
sampling run while it runs (`live`), and the app as a Hugging Face Space (`space`).

    python -m hf_ddpm.demo [--model checkpoints/ddpm-mnist-cfg ...]      # pip install 'hf-ddpm[demo]'
"""

from .app import main

__all__ = ["main"]
