"""`hf-ddpm`, the console command: one entry point for the package's command lines.

    hf-ddpm train --config training/configs/mnist.yaml      # = python training/train.py (one process)
    hf-ddpm sample --model outputs/ddpm-mnist --out grid.png
    hf-ddpm evaluate --model outputs/ddpm-mnist
    hf-ddpm push outputs/ddpm-mnist my-org/ddpm-mnist
    hf-ddpm visualize --out docs/images
    hf-ddpm demo --model checkpoints/ddpm-mnist-cfg            # pip install 'hf-ddpm[demo]'

Each subcommand takes the arguments of its `python -m hf_ddpm.MODULE` form (`hf-ddpm sample --help`).
Several processes or GPUs: `accelerate launch -m hf_ddpm.cli train ...`.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, what it does); each module but hf_ddpm.training has `main(argv)`.
COMMANDS = {
    "train": ("hf_ddpm.training", "train a diffusion model (as training/train.py)"),
    "train-autoencoder": ("hf_ddpm.training", "train a latent diffusion autoencoder"),
    "sample": ("hf_ddpm.sample", "sample a grid from an exported pipeline"),
    "evaluate": ("hf_ddpm.evaluate", "score a pipeline against real data"),
    "push": ("hf_ddpm.hub", "upload an output folder to the Hub"),
    "visualize": ("hf_ddpm.visualize", "draw the explanatory pictures"),
    "classifier": ("hf_ddpm.classifier", "train a feature classifier for the metrics"),
    "demo": ("hf_ddpm.demo", "the Gradio app: live denoising, the forward process, inpainting"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        usage = "usage: hf-ddpm COMMAND [ARGS ...]\n\ncommands:\n" + "\n".join(lines)
        if argv and argv[0] not in ("-h", "--help"):
            print(
                f"hf-ddpm: error: unknown command {argv[0]!r}: choose one of {list(COMMANDS)}",
                file=sys.stderr,
            )
            sys.exit(2)
        print(usage)
        return
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[command][0])
    sys.argv[0] = f"hf-ddpm {command}"  # argparse's prog in usage and error lines
    if command in ("train", "train-autoencoder"):
        trainer = module.AutoencoderTrainer if command == "train-autoencoder" else module.DiffusionTrainer
        module.run_cli(trainer, rest, description=COMMANDS[command][1])
    else:
        module.main(["push", *rest] if command == "push" else rest)


if __name__ == "__main__":
    main()
