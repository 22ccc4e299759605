"""The feature classifiers behind the sample metrics: small CNNs trained by the project, one per data set.

    python -m hf_ddpm.classifier --dataset mnist --out hf_ddpm/classifiers/mnist --seed 0

A classifier is a folder with `config.json` (architecture, class names, how it was trained, its test
accuracy) and `model.safetensors`. Its penultimate layer gives the features of classifier-FID and its
softmax the legibility and class-entropy metrics (`hf_ddpm.metrics`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from .arguments import ArgumentParser, at_least
from .files import write_atomically, write_json

# The MNIST classifier ships in the package. The textures classifier does not (the texture photographs have
# no open licence): it lives in a source checkout's checkpoints/, or wherever a path or Hub id says.
PACKAGED = Path(__file__).parent / "classifiers"
CHECKOUT = Path(__file__).resolve().parents[1] / "checkpoints"


@dataclass
class ClassifierConfig:
    num_classes: int
    class_names: list[str]
    channels: int = 1
    image_size: int = 28
    width: int = 32  # channels of the first conv; the second has twice as many
    feature_dim: int = 128  # the penultimate layer, the space classifier-FID lives in
    # How it was made and how good it is (filled in by `train_classifier`).
    dataset: str = ""
    seed: int = 0
    epochs: int = 0
    test_accuracy: float | None = None
    extra: dict = field(default_factory=dict)


class Classifier(nn.Module):
    """Two conv-pool stages, a feature layer, a linear head. Input: images in [-1, 1], (N, C, H, W)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(
            nn.Conv2d(config.channels, w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * (config.image_size // 4) ** 2, config.feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(config.feature_dim, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, (N, feature_dim)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, (N, num_classes)."""
        return self.head(self.dropout(self.features(x)))


def save_classifier(model: Classifier, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    write_atomically(out / "model.safetensors", lambda path: save_file(state, path))
    write_json(out / "config.json", asdict(model.config))
    return out


def find_classifier(name: str | Path) -> Path:
    """The folder of a classifier: `name` itself when it is one; for a data set's name (`mnist`) the packaged
    classifier, else a source checkout's `checkpoints/classifier-NAME`; for a Hub repo id, its download.
    `FileNotFoundError` in one line when there is none."""
    candidates = [Path(name), PACKAGED / str(name), CHECKOUT / f"classifier-{name}"]
    found = next((p for p in candidates if (p / "config.json").is_file()), None)
    if found is None and str(name).count("/") == 1 and not Path(name).exists():
        found = _download(str(name))
    if found is None or not (found / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"no classifier {str(name)!r}: pass a folder with config.json and model.safetensors, a Hub "
            f"repo id, or a data set with a packaged classifier ({', '.join(sorted(_packaged()))}); train "
            "one with `python -m hf_ddpm.classifier --dataset NAME --out DIR`"
        )
    return found


def _packaged() -> list[str]:
    return [p.name for p in PACKAGED.iterdir() if (p / "config.json").is_file()]


def _download(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=["config.json", "model.safetensors"]))
    except (RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, ValueError):
        return None


def load_classifier(name_or_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Loads a classifier (`find_classifier`: a folder, a data set's name such as `mnist`, or a Hub id)."""
    path = find_classifier(name_or_dir)
    config = ClassifierConfig(**json.loads((path / "config.json").read_text()))
    model = Classifier(config)
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model.to(device).eval()


@torch.no_grad()
def predict(
    model: Classifier, images: torch.Tensor, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (N, feature_dim) and class probabilities (N, num_classes) of uint8 images (N, C, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    features, probs = [], []
    for batch in images.split(batch_size):
        x = batch.to(device, torch.float32) / 127.5 - 1
        f = model.features(x)
        features.append(f.cpu())
        probs.append(model.head(f).softmax(-1).cpu())
    return torch.cat(features), torch.cat(probs)


def _augment(x: torch.Tensor, generator: torch.Generator, flip: bool) -> torch.Tensor:
    """Random shifts of up to 2 pixels (and horizontal flips for textures): cheap, label-preserving."""
    n, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dy, dx = torch.randint(0, 5, (2,), generator=generator).tolist()  # one shift per batch keeps it cheap
    x = padded[:, :, dy : dy + h, dx : dx + w]
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def train_classifier(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    config: ClassifierConfig,
    epochs: int = 4,
    batch_size: int = 128,
    lr: float = 2e-3,
    flip: bool = False,
) -> Classifier:
    """Trains with AdamW and cosine decay from `config.seed`; images are uint8 (N, C, H, W).

    The seed fixes the initial weights, the batch order and the augmentation, so the script reproduces
    the committed weights on the same machine and torch version.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = Classifier(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(train_images) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    progress = tqdm(total=steps, desc="classifier")
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(train_images), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            x = _augment(train_images[idx].float() / 127.5 - 1, generator, flip)
            loss = F.cross_entropy(model(x), train_labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    progress.close()
    _, probs = predict(model, test_images)
    config.test_accuracy = (probs.argmax(-1) == test_labels).float().mean().item()
    config.epochs = epochs
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    from hf_ddpm.data import load_labeled_split

    parser = ArgumentParser(
        prog="python -m hf_ddpm.classifier", description="Train a feature classifier for the metrics."
    )
    parser.add_argument("--dataset", required=True, help="mnist, textures, or a local dataset folder")
    parser.add_argument("--out", required=True, help="folder for config.json and model.safetensors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=at_least(1), default=4)
    parser.add_argument("--flip", action="store_true", help="random horizontal flips (textures)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        train_x, train_y, names = load_labeled_split(args.dataset, "train")
        test_x, test_y, _ = load_labeled_split(args.dataset, "test")
    except (ValueError, RuntimeError) as err:
        parser.error(str(err))
    config = ClassifierConfig(
        num_classes=len(names),
        class_names=names,
        channels=train_x.shape[1],
        image_size=train_x.shape[-1],
        dataset=args.dataset,
        seed=args.seed,
    )
    model = train_classifier(train_x, train_y, test_x, test_y, config, epochs=args.epochs, flip=args.flip)
    config.extra = {"train_minutes": round((time.perf_counter() - start) / 60, 2), "flip": args.flip}
    out = save_classifier(model, args.out)
    print(f"test accuracy {config.test_accuracy:.4f} on {len(test_x)} images; saved to {out}")


if __name__ == "__main__":
    main()
