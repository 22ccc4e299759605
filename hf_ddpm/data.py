"""Image data for DDPM training: find a split, load it with `datasets`, turn rows into uint8 tensors.

Sources, in the order `resolve_source` tries them:

* `dataset.path`: a local folder. Parquet files in the Hub's layout (`train-00000-of-00001.parquet`,
  `data/train-*.parquet`, `train/*.parquet`) are read with the `parquet` builder; a folder without
  parquet files is read as an `imagefolder` (class label = sub-folder name).
* `$HF_DDPM_DATA_DIR/<last part of dataset.name>` when that folder exists (offline first).
* the Hub id `dataset.name`; when the Hub cannot be reached and the name's data set has a sample bundled
  with hf-ddpm (`sample_data/mnist`: 5,000 training and 1,000 test digits), that sample, with a warning.

Two ways to feed training:

* in memory (default): `decode_split` decodes every row once into one uint8 tensor N x C x H x W,
  so an epoch costs no PNG decoding at all (MNIST train: 60k x 784 bytes = 47 MB).
* streaming (`dataset.streaming: true`): `StreamingImageDataset` decodes rows as they arrive.

Both yield `(image, label)` with image uint8 C x H x W in [0, 255] and label an int64 scalar (-1 when
the data has no usable label column). Scaling to [-1, 1] (`to_model_range`) and random flips happen
in the training step, on the device, so the data held here stays 4x smaller than float32.

Image conversion (the same for every row, see `preprocess_image`):

* channels: `dataset.channels` 1 -> mode "L", 3 -> "RGB". With `channels: null` grayscale-like modes
  ("1", "L", "LA", "I", "I;16", "F", "P" with a gray palette) give 1 channel and every other mode
  (RGB, RGBA, CMYK, YCbCr, colour "P", ...) gives 3. The first row fixes the channel count for the
  whole split (or the `Image(mode=...)` feature when the data declares one). A later colour row in
  a split that started grayscale is an error rather than a silent conversion to gray; a grayscale
  row in a colour split is replicated to RGB, which loses nothing.
* transparency (RGBA, LA, P/L/RGB with a transparent colour): composited onto black, i.e. colour x
  alpha, so whatever colour hides under fully transparent pixels never leaks into training.
* 16-bit grayscale ("I;16", "I"): scaled by 255/65535. (Pillow's own `convert("L")` clips every
  value above 255 to white, which would turn a 16-bit PNG into a blank image.) Float images ("F")
  are clipped to [0, 255] by Pillow, i.e. assumed to hold 8-bit values already.
* EXIF orientation is applied, as `datasets.Image` does when it decodes.
* size: the shorter side is resized to `image_size` with PIL's bicubic filter (antialiased when
  shrinking), then the centre is cropped to a square. Images already `image_size` square are left
  untouched, so MNIST's pixels reach the model bit-exact.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from PIL import Image as PILImage
from PIL import ImageOps
from tqdm.auto import tqdm

from hf_ddpm.config import DatasetConfig

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "HF_DDPM_DATA_DIR"
# Small samples of data sets, shipped in the package (see sample_data/README.md), by short name.
SAMPLE_DATA = Path(__file__).parent / "sample_data"

_MODE_FOR_CHANNELS = {1: "L", 3: "RGB"}
# Pillow modes whose pixels are one intensity (possibly with alpha): they become "L".
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
# Integer modes that hold 16-bit samples when they come from a 16-bit PNG or TIFF.
_WIDE_INT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
# `{split}-anything.parquet`, the Hub's shard naming (`train-00000-of-00001.parquet`).
_SPLIT_IN_FILENAME = re.compile(r"^(?P<split>\w+)-.*\.parquet$")
_DECODE_BATCH = 1024


@dataclass
class DatasetInfo:
    """What the training loop needs to know about the loaded split."""

    source: str  # local folder or Hub id the rows came from
    num_rows: int | None  # rows used (after max_samples); None when streaming and unknown
    channels: int  # 1 or 3
    image_size: int  # images are image_size x image_size
    class_names: list[str] | None  # from the label column's ClassLabel feature


# ---------------------------------------------------------------------------------------------
# Where the data is and how to load it
# ---------------------------------------------------------------------------------------------


def resolve_source(cfg: DatasetConfig) -> str:
    """Returns the local folder (absolute path) or Hub id that `cfg` points to.

    `cfg.path` wins; a relative path is looked up in `$HF_DDPM_DATA_DIR` first, then in the working
    directory. Without a path, `$HF_DDPM_DATA_DIR/<last part of cfg.name>` is used when it exists
    (so `ylecun/mnist` trains offline from `$HF_DDPM_DATA_DIR/mnist`), else the Hub id `cfg.name`.
    """
    data_dir = os.environ.get(DATA_DIR_ENV) or None
    if cfg.path:
        path = Path(cfg.path).expanduser()
        candidates = [path] if path.is_absolute() else []
        if not path.is_absolute():
            if data_dir:
                candidates.append(Path(data_dir).expanduser() / path)
            candidates.append(Path.cwd() / path)
        for candidate in candidates:
            if candidate.exists():
                return str(candidate.resolve())
        raise ValueError(
            f"dataset.path {cfg.path!r} does not exist (looked at {', '.join(map(str, candidates))}); "
            f"set dataset.path to a folder of parquet files or images, or set {DATA_DIR_ENV} to the "
            "folder that contains it"
        )
    if cfg.name:
        if data_dir:
            local = Path(data_dir).expanduser() / cfg.name.rstrip("/").split("/")[-1]
            if local.is_dir():
                return str(local.resolve())
        return cfg.name
    raise ValueError("no dataset given: set dataset.path (a local folder) or dataset.name (a Hub dataset id)")


def bundled_sample(source: str) -> Path | None:
    """The sample of a Hub data set bundled with hf-ddpm (`ylecun/mnist` -> sample_data/mnist), if any."""
    if Path(source).expanduser().exists() or _looks_like_path(source):
        return None
    folder = SAMPLE_DATA / source.rstrip("/").split("/")[-1]
    return folder if folder.is_dir() else None


_UNREACHABLE: set[str] = set()  # Hub data sets that could not be reached, replaced by their samples


def load_split_offline_first(
    source: str, split: str, streaming: bool = False
) -> tuple[datasets.Dataset | datasets.IterableDataset, str]:
    """`load_split`, and the source the rows came from: a Hub data set that cannot be reached is replaced
    by its bundled sample (`bundled_sample`) with a warning, so that an offline machine still trains."""
    sample = bundled_sample(source)
    if sample is not None and source in _UNREACHABLE:  # found out earlier in this process: no more retries
        return load_split(str(sample), split, streaming), str(sample)
    try:
        return load_split(source, split, streaming), source
    except RuntimeError as err:  # the Hub could not be reached (`_load`)
        if sample is None:
            raise
        logger.warning("%s. Using the %s sample bundled with hf-ddpm instead (%s).", err, sample.name, sample)
        _UNREACHABLE.add(source)
        return load_split(str(sample), split, streaming), str(sample)


def load_split(
    source: str, split: str, streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
    """Loads one split of a local folder or Hub dataset with `datasets.load_dataset`.

    A folder with parquet files is read as parquet even when it also holds images or scripts
    (`textures/` keeps its source PNGs in `raw/`); a folder without parquet is an `imagefolder`.
    Anything that is not a folder is a Hub id.
    """
    folder = Path(source).expanduser()
    if folder.is_dir():
        parquet = find_parquet_splits(folder)
        if parquet:
            return _load_parquet_split(folder, parquet, split, streaming)
        return _load("imagefolder", split, streaming, what=f"image folder {folder}", data_dir=str(folder))
    if folder.exists():
        raise ValueError(
            f"dataset source {source} is a file; set dataset.path to the folder that holds "
            "`{split}-*.parquet` files or class sub-folders of images"
        )
    if _looks_like_path(source):
        raise ValueError(f"dataset folder {source} does not exist; set dataset.path or {DATA_DIR_ENV}")
    return _load(source, split, streaming, what=f"dataset {source!r}", hub=True)


def find_parquet_splits(folder: Path) -> dict[str, list[str]]:
    """Maps split name -> sorted parquet files under `folder` (top level, `data/`, and one level below).

    The split is the file name's part before the first "-" (`train-00000-of-00001.parquet`), else
    the parent folder's name (`train/0000.parquet`), else the file name (`train.parquet`).
    """
    roots = [folder] + ([folder / "data"] if (folder / "data").is_dir() else [])
    files: set[Path] = set()
    for root in roots:
        files.update(root.glob("*.parquet"))
        files.update(root.glob("*/*.parquet"))
    splits: dict[str, list[str]] = {}
    for file in sorted(files):
        if any(part.startswith(".") for part in file.relative_to(folder).parts):
            continue  # caches and checkpoints of other tools
        match = _SPLIT_IN_FILENAME.match(file.name)
        if match:
            split = match["split"]
        elif file.parent not in roots:
            split = file.parent.name
        else:
            split = file.stem
        splits.setdefault(split, []).append(str(file))
    return splits


def _load_parquet_split(
    folder: Path, parquet: dict[str, list[str]], split: str, streaming: bool
) -> datasets.Dataset | datasets.IterableDataset:
    if split not in parquet:
        raise ValueError(
            f"split {split!r} not found in {folder}: available splits are {sorted(parquet)} "
            "(from parquet files named {split}-*.parquet or {split}/*.parquet); set dataset.split"
        )
    files = parquet[split]
    # Checked up front: `datasets` reports an empty split as 'Instruction "test" corresponds to no data!'
    # (in memory) and as an iterator that silently yields nothing (streaming).
    if _parquet_num_rows(files) == 0:
        raise ValueError(f"split {split!r} of {folder} is empty (0 rows in {', '.join(files)})")
    if streaming:
        return _stream_parquet(files)
    # Only this split's files are passed, so asking for `test` never converts the 60k-row `train`.
    return _load("parquet", split, streaming, what=str(folder), data_files={split: files})


def _parquet_num_rows(files: list[str]) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _stream_parquet(files: list[str]) -> datasets.IterableDataset:
    """Local parquet files as a streamed split, one shard per file, with the features `datasets` would give.

    Not `load_dataset("parquet", streaming=True)`: `datasets` 5.2 reads each file through a Python file
    object with `ParquetFileFragment.to_batches`, and a stream left before its end (the peek at the first
    row, a run that stops after its last step) can then abort or hang the process when pyarrow shuts that
    read down (apache/arrow#45214, huggingface/datasets#7357). Read from the path, pyarrow's own file, it
    does not.
    """
    import pyarrow.parquet as pq

    features = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
    return datasets.IterableDataset.from_generator(
        _parquet_rows, features=features, gen_kwargs={"files": files}
    )


def _parquet_rows(files: list[str]) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=256):
            yield from batch.to_pylist()


def _load(
    path: str, split: str, streaming: bool, *, what: str, hub: bool = False, **kwargs: Any
) -> datasets.Dataset | datasets.IterableDataset:
    """`datasets.load_dataset` with its errors turned into one line that names the data and the fix."""
    try:
        return datasets.load_dataset(path, split=split, streaming=streaming, **kwargs)
    except ValueError as e:
        message = _one_line(e)
        if "Unknown split" in message:
            raise ValueError(f"split {split!r} not found in {what}: {message}; set dataset.split") from e
        if "corresponds to no data" in message:
            raise ValueError(f"split {split!r} of {what} is empty") from e
        raise
    except (OSError, datasets.exceptions.DatasetsError) as e:
        if hub:
            raise RuntimeError(
                f"could not load dataset {path!r} from the Hugging Face Hub ({type(e).__name__}: "
                f"{_one_line(e)}); set dataset.path or {DATA_DIR_ENV} to a local copy"
            ) from e
        if isinstance(e, FileNotFoundError):
            raise ValueError(
                f"no parquet files and no images found in {what}; set dataset.path to a folder with "
                "{split}-*.parquet files or class sub-folders of images"
            ) from e
        raise


def _looks_like_path(source: str) -> bool:
    # Hub ids are `name` or `owner/name`; anything else can only be meant as a local folder.
    return os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1 or "\\" in source


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# ---------------------------------------------------------------------------------------------
# One image -> uint8 array
# ---------------------------------------------------------------------------------------------


def preprocess_image(image: PILImage.Image, image_size: int, channels: int | None = None) -> torch.Tensor:
    """PIL image -> uint8 tensor C x image_size x image_size (C = `channels`, or the image's own).

    See the module docstring for the conversion rules.
    """
    mode = _MODE_FOR_CHANNELS[channels] if channels is not None else natural_mode(image)
    return _to_chw_tensor(_image_to_array(image, mode, image_size))


def natural_mode(image: PILImage.Image) -> str:
    """Returns "L" for grayscale-like images (including gray palettes), "RGB" for everything else."""
    if image.mode in _GRAY_MODES:
        return "L"
    if image.mode in ("P", "PA") and _palette_is_gray(image):
        return "L"
    return "RGB"


def _palette_is_gray(image: PILImage.Image) -> bool:
    palette = image.getpalette("RGB")
    if not palette:
        return False
    rgb = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    return bool((rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all())


def _image_to_array(image: PILImage.Image, mode: str, image_size: int) -> np.ndarray:
    """PIL image -> uint8 array H x W (mode "L") or H x W x 3 (mode "RGB"), H = W = image_size."""
    image = _resize_center_crop(_convert(image, mode), image_size)
    return np.asarray(image, dtype=np.uint8)


def _convert(image: PILImage.Image, mode: str) -> PILImage.Image:
    """Converts to "L" or "RGB": alpha composited onto black, 16-bit samples scaled to 8 bits."""
    if image.mode == mode and not image.has_transparency_data:
        return image
    if image.mode in _WIDE_INT_MODES:
        wide = np.asarray(image).astype(np.float32)
        gray = PILImage.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), mode="L")
        return gray if mode == "L" else gray.convert("RGB")
    if image.has_transparency_data:
        if image.mode == "La":
            image = image.convert("LA")  # Pillow has no La -> RGBA conversion
        with_alpha = np.asarray(image.convert("LA" if mode == "L" else "RGBA"), dtype=np.uint16)
        color, alpha = with_alpha[..., :-1], with_alpha[..., -1:]
        premultiplied = ((color * alpha + 127) // 255).astype(np.uint8)
        return PILImage.fromarray(premultiplied[..., 0] if mode == "L" else premultiplied, mode=mode)
    return image.convert(mode)


def _resize_center_crop(image: PILImage.Image, size: int) -> PILImage.Image:
    """Shorter side -> `size` (bicubic, antialiased by PIL when shrinking), then a centred square crop."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), PILImage.Resampling.BICUBIC)
    left, top = round((new_w - size) / 2), round((new_h - size) / 2)
    return image.crop((left, top, left + size, top + size))


def _to_chw_tensor(array: np.ndarray) -> torch.Tensor:
    """uint8 H x W or H x W x C -> uint8 tensor C x H x W."""
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    # A copy: arrays that view PIL's buffer are read-only, and torch wants to own writable memory.
    return torch.from_numpy(np.array(array, dtype=np.uint8, order="C"))


def to_model_range(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images in [0, 255] (any shape) -> `dtype` in [-1, 1]: x / 127.5 - 1."""
    return (images.float() / 127.5 - 1.0).to(dtype)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Model-range images (any shape, clamped to [-1, 1]) -> uint8 in [0, 255]; inverts `to_model_range`."""
    return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


# ---------------------------------------------------------------------------------------------
# Rows -> images, shared by the in-memory and the streaming path
# ---------------------------------------------------------------------------------------------


def _open_image(value: Any, row: int | str, column: str) -> PILImage.Image:
    """A stored image (`{"bytes", "path"}`, raw bytes, a path, or a PIL image) -> loaded PIL image."""
    if isinstance(value, PILImage.Image):
        return value
    try:
        if isinstance(value, dict) and value.get("bytes") is not None:
            data = value["bytes"]
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = value
        else:
            # Paths (imagefolder rows, remote files when streaming): `datasets` knows how to open them.
            path = value.get("path") if isinstance(value, dict) else value
            if not isinstance(path, str):
                raise TypeError(f"got {type(value).__name__} {str(value)[:80]!r}")
            return datasets.Image().decode_example({"path": path, "bytes": None})
        image = PILImage.open(io.BytesIO(data))
        image.load()  # decode now, so a broken file fails here with its row number
    except Exception as e:
        raise ValueError(
            f"row {row}, column {column!r}: cannot decode the image ({type(e).__name__}: {_one_line(e)}); "
            "expected PNG/JPEG bytes of an image"
        ) from e
    if image.getexif().get(PILImage.ExifTags.Base.Orientation) is not None:
        image = ImageOps.exif_transpose(image)  # as datasets.Image.decode_example does
    return image


def _target_mode(channels: int | None, feature: Any, first: PILImage.Image) -> tuple[str, bool]:
    """("L" | "RGB", strict): the mode every row is converted to.

    strict: the mode was guessed from the first row, so a later colour row must not be silently
    turned gray. An explicit `channels` or a declared `Image(mode=...)` is the user's decision.
    """
    if channels is not None:
        return _MODE_FOR_CHANNELS[channels], False
    declared = getattr(feature, "mode", None) if isinstance(feature, datasets.Image) else None
    if declared and declared not in ("P", "PA"):
        return ("L" if declared in _GRAY_MODES else "RGB"), False
    return natural_mode(first), True


def _row_to_array(value: Any, row: int | str, cfg: DatasetConfig, mode: str, strict: bool) -> np.ndarray:
    """One stored image -> uint8 array H x W ("L") or H x W x 3 ("RGB")."""
    image = _open_image(value, row, cfg.image_column)
    if strict and mode == "L" and image.mode != "L" and natural_mode(image) == "RGB":
        raise ValueError(
            f"row {row}, column {cfg.image_column!r}: colour image (mode {image.mode}) in a split whose "
            "first image is grayscale; set dataset.channels: 3 to keep colour or dataset.channels: 1 "
            "to convert every image to grayscale"
        )
    try:
        return _image_to_array(image, mode, cfg.image_size)
    except (ValueError, OSError) as e:  # e.g. Pillow cannot convert LAB to RGB
        raise ValueError(
            f"row {row}, column {cfg.image_column!r}: cannot convert mode {image.mode} to {mode} "
            f"({_one_line(e)})"
        ) from e


def _check_cfg(cfg: DatasetConfig) -> None:
    if cfg.channels not in (None, 1, 3):
        raise ValueError(f"dataset.channels must be 1, 3 or null, got {cfg.channels!r}")
    if cfg.image_size < 1:
        raise ValueError(f"dataset.image_size must be positive, got {cfg.image_size}")
    if cfg.max_samples is not None and cfg.max_samples < 1:
        raise ValueError(f"dataset.max_samples must be positive or null, got {cfg.max_samples}")


def _check_image_column(columns: list[str] | None, cfg: DatasetConfig) -> None:
    if columns is not None and cfg.image_column not in columns:
        raise ValueError(
            f"image column {cfg.image_column!r} not found; the dataset has columns {list(columns)}; "
            "set dataset.image_column"
        )


def _usable_label_column(features: datasets.Features | None, cfg: DatasetConfig) -> str | None:
    """The label column when it holds class indices (ClassLabel or integers), else None (labels -1)."""
    feature = (features or {}).get(cfg.label_column)
    if feature is None:
        return None
    if isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    ):
        return cfg.label_column
    # Training is unconditional, so a caption or float column need not stop it, but say so.
    warnings.warn(
        f"label column {cfg.label_column!r} holds {feature!r}, not class indices; labels are set to -1",
        stacklevel=3,
    )
    return None


def class_names(features: datasets.Features | None, label_column: str) -> list[str] | None:
    """The names of a `ClassLabel` label column, else None."""
    feature = (features or {}).get(label_column)
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _raw_images(ds: datasets.Dataset | datasets.IterableDataset, cfg: DatasetConfig, label: str | None):
    """Only the needed columns, images left as stored bytes (we decode them ourselves, once)."""
    ds = ds.select_columns([cfg.image_column] + ([label] if label else []))
    if isinstance((ds.features or {}).get(cfg.image_column), datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))
    return ds


# ---------------------------------------------------------------------------------------------
# In memory
# ---------------------------------------------------------------------------------------------


def decode_split(
    ds: datasets.Dataset, cfg: DatasetConfig, *, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decodes the first `cfg.max_samples` rows (all by default) once.

    Returns:
        images: uint8 N x C x image_size x image_size, C = cfg.channels or the data's own.
        labels: int64 N, the label column's class indices, -1 where there is none.
    """
    _check_cfg(cfg)
    _check_image_column(ds.column_names, cfg)
    num_rows = len(ds) if cfg.max_samples is None else min(len(ds), cfg.max_samples)
    if num_rows == 0:
        raise ValueError(f"the dataset split is empty (columns {ds.column_names}); nothing to train on")
    label = _usable_label_column(ds.features, cfg)
    raw = _raw_images(ds.with_format(None).select(range(num_rows)), cfg, label)

    first = _open_image(raw[0][cfg.image_column], 0, cfg.image_column)
    mode, strict = _target_mode(cfg.channels, ds.features.get(cfg.image_column), first)
    channels = 1 if mode == "L" else 3
    # Pre-allocated and filled in place: no list of 60k small tensors, no final copy by torch.stack.
    images = torch.empty((num_rows, channels, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    labels = torch.full((num_rows,), -1, dtype=torch.int64)
    out = images.numpy()
    row = 0
    # disable=None: shown on a terminal, silent in logs and CI.
    bar = tqdm(total=num_rows, desc=f"decoding {cfg.split}", unit="img", disable=None if progress else True)
    with bar:
        for batch in raw.iter(batch_size=_DECODE_BATCH):
            start = row
            for value in batch[cfg.image_column]:
                array = _row_to_array(value, row, cfg, mode, strict)
                out[row] = array if array.ndim == 2 else array.transpose(2, 0, 1)
                row += 1
            if label:
                labels[start:row] = torch.tensor([-1 if v is None else v for v in batch[label]])
            bar.update(row - start)
    return images, labels


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------


class StreamingImageDataset(torch.utils.data.IterableDataset):
    """Streams `(uint8 C x H x W image, int64 label)` from a `datasets.IterableDataset`.

    Rows are shuffled in a buffer of `cfg.shuffle_buffer_size` with a seed shared by all processes
    (call `set_epoch` each epoch for a new order), split across `world_size` processes, and within a
    process across DataLoader workers; every process and worker sees a disjoint part.
    `cfg.max_samples` keeps the first N rows of the stream (before shuffling).
    """

    def __init__(
        self,
        ds: datasets.IterableDataset,
        cfg: DatasetConfig,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_cfg(cfg)
        _check_image_column(ds.column_names, cfg)
        self.cfg = cfg
        self.label_column = _usable_label_column(ds.features, cfg)
        raw = _raw_images(ds, cfg, self.label_column) if ds.column_names else ds
        if cfg.max_samples is not None:
            raw = raw.take(cfg.max_samples)
        # Peek one row: the channel count must be known before training builds the model, and an
        # empty split should fail here rather than as a training loop that never gets a batch.
        first = next(iter(raw.take(1)), None)
        if first is None:
            raise ValueError(f"the streamed split {cfg.split!r} is empty; nothing to train on")
        _check_image_column(list(first), cfg)
        feature = (ds.features or {}).get(cfg.image_column)
        self.mode, self._strict = _target_mode(
            cfg.channels, feature, _open_image(first[cfg.image_column], 0, cfg.image_column)
        )
        self.channels = 1 if self.mode == "L" else 3
        # Interleaving several input shards into the buffer shuffles better, but datasets 5.2 then
        # sleeps 5 s (config.SLEEP_TIME_ON_THREADS_SHUTDOWN, an arrow workaround) at the end of every
        # parquet pass; a single file gains nothing from it, so it only pays that where it helps.
        input_shards = max(1, min(10, raw.num_shards))
        raw = raw.shuffle(
            seed=seed, buffer_size=cfg.shuffle_buffer_size, max_buffer_input_shards=input_shards
        )
        if world_size > 1:
            raw = split_dataset_by_node(raw, rank=rank, world_size=world_size)
        self._ds = raw
        self._rank = rank
        # In shared memory so that persistent DataLoader workers see the epoch set in the main process.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Reshuffles: the buffer shuffle and the shard order use seed + epoch."""
        self._epoch.fill_(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self._ds
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.num_workers > 1:
            # Whole files per worker when they divide evenly, else every n-th row; `datasets` left to
            # itself hands out whole files only and leaves workers beyond the file count idle.
            ds = split_dataset_by_node(ds, rank=worker.id, world_size=worker.num_workers)
        ds.set_epoch(int(self._epoch))
        where = f"rank {self._rank}" + (f", worker {worker.id}" if worker is not None else "")
        count = 0
        # `.iter()` rather than `iter(ds)`: the latter re-splits by DataLoader worker on its own.
        for batch in ds.iter(batch_size=64):
            labels = batch.get(self.label_column) if self.label_column else None
            for i, value in enumerate(batch[self.cfg.image_column]):
                row = f"{count} of the stream ({where})"
                image = _to_chw_tensor(_row_to_array(value, row, self.cfg, self.mode, self._strict))
                label = -1 if labels is None or labels[i] is None else labels[i]
                yield image, torch.tensor(label, dtype=torch.int64)
                count += 1


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def load_image_dataset(
    cfg: DatasetConfig,
    *,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> tuple[torch.utils.data.Dataset, DatasetInfo]:
    """Loads `cfg.split` as a torch dataset of `(uint8 C x H x W image, int64 label)`.

    In memory (default) every process decodes the whole split into a `TensorDataset` and the
    (accelerate-prepared) DataLoader shards batches; `seed`, `rank` and `world_size` then only
    decide who shows a progress bar. Streaming returns a `StreamingImageDataset` that shuffles with
    `seed` and reads only this process's share of the rows.
    """
    source = resolve_source(cfg)
    logger.info("dataset %s, split %s%s", source, cfg.split, " (streaming)" if cfg.streaming else "")
    ds, source = load_split_offline_first(source, cfg.split, streaming=cfg.streaming)
    names = class_names(ds.features, cfg.label_column)
    if cfg.streaming:
        stream = StreamingImageDataset(ds, cfg, seed=seed, rank=rank, world_size=world_size)
        num_rows = _streamed_num_rows(ds, source, cfg)
        return stream, DatasetInfo(source, num_rows, stream.channels, cfg.image_size, names)
    images, labels = decode_split(ds, cfg, progress=progress and rank == 0)
    info = DatasetInfo(source, len(images), images.shape[1], cfg.image_size, names)
    return torch.utils.data.TensorDataset(images, labels), info


def check_batches(num_rows: int | None, batch_size: int, num_processes: int = 1) -> None:
    """`ValueError` when the rows cannot fill one global batch: with `drop_last` an epoch would then hold no
    batch at all, and a training loop counting steps would wait forever. Unknown `num_rows` passes."""
    needed = batch_size * num_processes
    if num_rows is not None and num_rows < needed:
        raise ValueError(
            f"the dataset has {num_rows} rows, fewer than one global batch ({batch_size} per process x "
            f"{num_processes} processes = {needed}), so no batch can be drawn: lower "
            "training.train_batch_size, or raise dataset.max_samples / use a larger split"
        )


def _streamed_num_rows(ds: datasets.IterableDataset, source: str, cfg: DatasetConfig) -> int | None:
    """Rows of the whole split (all processes together), when known without reading the data."""
    split_info = (ds.info.splits or {}).get(cfg.split) if ds.info else None
    num_rows = split_info.num_examples if split_info is not None and split_info.num_examples else None
    if num_rows is None and Path(source).is_dir():
        files = find_parquet_splits(Path(source)).get(cfg.split)
        num_rows = _parquet_num_rows(files) if files else None
    if num_rows is not None and cfg.max_samples is not None:
        num_rows = min(num_rows, cfg.max_samples)
    return num_rows


def load_labeled_split(
    dataset: str, split: str, max_samples: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """uint8 images (N, C, H, W), int64 labels (N,) and class names of one split, for the metrics.

    `dataset` is a local folder or a name resolved like `dataset.name` (`mnist` reads
    `$HF_DDPM_DATA_DIR/mnist`).
    """
    local = Path(dataset).expanduser()
    cfg = DatasetConfig(name=None, path=str(local)) if local.is_dir() else DatasetConfig(name=dataset)
    cfg.split, cfg.max_samples = split, max_samples
    ds, _ = load_split_offline_first(resolve_source(cfg), split)
    images, labels = decode_split(ds, cfg, progress=False)
    names = class_names(ds.features, cfg.label_column)
    if names is None or (labels < 0).any():
        raise ValueError(
            f"{dataset} ({split}) has no ClassLabel column {cfg.label_column!r}; metrics need labels"
        )
    return images, labels, names
