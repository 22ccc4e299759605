"""The demo: a Gradio app over trained pipelines (`app`), what its tabs do (`actions`), the frames of a
sampling run while it runs (`live`), and the app as a Hugging Face Space (`space`).

    python -m hf_ddpm.demo [--model checkpoints/ddpm-mnist-cfg ...]      # pip install 'hf-ddpm[demo]'
"""


def main(argv: list[str] | None = None) -> None:
    """`python -m hf_ddpm.demo`. Imported on call: `hf_ddpm.hub` imports `space` from here, and the app
    imports what imports the hub."""
    from .app import main as run

    run(argv)
