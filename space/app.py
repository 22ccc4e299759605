"""hf-ddpm's demo as a Hugging Face Space: `python -m hf_ddpm.hub push space/ ORG/NAME` uploads this file with
the hf_ddpm package beside it and the pipelines to serve under checkpoints/; the Space runs `python app.py`.

Run from the repository, it serves the reference checkpoints with the installed hf_ddpm, like
`python -m hf_ddpm.demo`. Extra arguments go to the demo (`python app.py --port 7861`).
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # in a Space, the bundled hf_ddpm package beside this file
# The forward-process tab's examples: 100 MNIST test digits shipped in data/mnist (no download).
os.environ.setdefault("HF_DDPM_DATA_DIR", str(HERE / "data"))

from hf_ddpm.demo import main  # noqa: E402

bundled = sorted(p for p in (HERE / "checkpoints").glob("*") if (p / "model_index.json").is_file())
models = [arg for folder in bundled for arg in ("--model", str(folder))]
# A Space serves on 0.0.0.0:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT); later arguments win.
host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0")
port = os.environ.get("GRADIO_SERVER_PORT", "7860")
main([*models, "--host", host, "--port", port, *sys.argv[1:]])
