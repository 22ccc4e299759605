"""hf_ddpm.data with the real `datasets` loader, on the real parquet files of shared/data and on
small parquet files written here. Nothing is mocked."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage
from PIL import ImageOps

from hf_ddpm.config import DatasetConfig
from hf_ddpm.data import (
    StreamingImageDataset,
    check_batches,
    decode_split,
    find_parquet_splits,
    load_image_dataset,
    load_split,
    preprocess_image,
    resolve_source,
    to_model_range,
    to_uint8,
)

MNIST_TEST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # shared/data/README.md


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    # Resolution depends on $HF_DDPM_DATA_DIR; tests that want it set it themselves.
    monkeypatch.delenv("HF_DDPM_DATA_DIR", raising=False)


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_split(
    folder: Path, split: str, images: list[bytes], labels: list[int] | None = None, column: str = "image"
) -> Path:
    """Writes `{split}-00000-of-00001.parquet` with an Image() column and, given labels, a ClassLabel."""
    features = {column: Image()}
    data: dict[str, list] = {column: [{"bytes": b, "path": None} for b in images]}
    if labels is not None:
        features["label"] = ClassLabel(names=["a", "b", "c"])
        data["label"] = labels
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}-00000-of-00001.parquet"
    Dataset.from_dict(data, features=Features(features)).to_parquet(str(path))
    return path


def _distinct_images(n: int) -> list[bytes]:
    """n different 4x4 grayscale PNGs: row i holds the values i, i + 1, ... (mod 256)."""
    return [_png(((np.arange(16) + 7 * i) % 256).astype(np.uint8).reshape(4, 4)) for i in range(n)]


def _as_multiset(images: torch.Tensor, labels: torch.Tensor) -> Counter:
    return Counter((bytes(img.numpy().tobytes()), int(lab)) for img, lab in zip(images, labels, strict=True))


# --- real data ------------------------------------------------------------------------------------


def test_mnist_test_split_from_local_folder(shared_data):
    ds, info = load_image_dataset(
        DatasetConfig(path=str(shared_data / "mnist"), split="test"), progress=False
    )
    images, labels = ds.tensors
    assert images.shape == (10_000, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and int(labels[0]) == 7
    assert torch.bincount(labels, minlength=10).tolist() == MNIST_TEST_LABEL_COUNTS
    # README: mean pixel value of the test split is 33.7912 (of 255); untouched 28x28 pixels.
    assert images.double().mean().item() == pytest.approx(33.7912, abs=1e-4)
    assert info.class_names == [str(d) for d in range(10)]
    assert (info.num_rows, info.channels, info.image_size) == (10_000, 1, 28)
    assert info.source == str((shared_data / "mnist").resolve())


def test_textures_folder_reads_parquet_not_raw_pngs(shared_data):
    folder = shared_data / "textures"
    splits = find_parquet_splits(folder)
    assert sorted(splits) == ["test", "train"]
    assert all(f.endswith(".parquet") for files in splits.values() for f in files)

    cfg = DatasetConfig(path=str(folder), split="test", max_samples=64)
    ds, info = load_image_dataset(cfg, progress=False)
    images, labels = ds.tensors
    assert images.shape == (64, 1, 28, 28)
    assert len(info.class_names) == 99 and info.class_names[0] == "D001" and info.class_names[-1] == "D099"
    # The parquet test split is ordered by class, 32 patches each (the raw folder has 1 image per class).
    assert labels.tolist() == [0] * 32 + [1] * 32
    assert (info.num_rows, info.channels) == (64, 1)


def test_image_folder_raw_textures_resized_with_folder_labels(shared_data):
    raw = shared_data / "textures" / "raw"
    ds, info = load_image_dataset(DatasetConfig(path=str(raw), max_samples=3), progress=False)
    images, labels = ds.tensors
    assert images.shape == (3, 1, 28, 28) and info.channels == 1
    assert labels.tolist() == [0, 1, 2]
    assert info.class_names[:3] == ["D001", "D002", "D003"] and len(info.class_names) == 99
    with PILImage.open(raw / "D001" / "D1.png") as original:
        assert original.size == (300, 300)
        expected = np.asarray(ImageOps.fit(original.convert("L"), (28, 28), PILImage.Resampling.BICUBIC))
        original_mean = np.asarray(original.convert("L"), dtype=np.float64).mean()
    assert np.array_equal(images[0, 0].numpy(), expected)
    # Antialiased: the small image keeps the big one's brightness.
    assert images[0].double().mean().item() == pytest.approx(original_mean, abs=3.0)


def test_image_folder_unknown_split_names_available_ones(shared_data):
    with pytest.raises(ValueError, match=r"split 'test' not found.*\['train'\]"):
        load_split(str(shared_data / "textures" / "raw"), "test")


def test_parquet_unknown_split_names_available_ones(shared_data):
    cfg = DatasetConfig(path=str(shared_data / "mnist"), split="validation")
    with pytest.raises(ValueError, match=r"split 'validation' not found.*\['test', 'train'\]"):
        load_image_dataset(cfg, progress=False)


def test_channels_3_replicates_gray_and_image_size_32_resizes(shared_data):
    path = str(shared_data / "mnist")
    gray, _ = decode_split(load_split(path, "test"), DatasetConfig(path=path, max_samples=8), progress=False)
    rgb, _ = decode_split(
        load_split(path, "test"), DatasetConfig(path=path, max_samples=8, channels=3), progress=False
    )
    assert rgb.shape == (8, 3, 28, 28)
    assert torch.equal(rgb, gray.expand(-1, 3, -1, -1))

    big, _ = decode_split(
        load_split(path, "test"), DatasetConfig(path=path, max_samples=8, image_size=32), progress=False
    )
    assert big.shape == (8, 1, 32, 32)
    assert not torch.equal(big[:, :, 2:30, 2:30], gray)  # resized, not padded
    assert big.double().mean().item() == pytest.approx(gray.double().mean().item(), rel=0.05)


# --- where the data is -----------------------------------------------------------------------------


def test_data_dir_env_resolves_hub_name_to_local_folder(sample_data, monkeypatch):
    assert resolve_source(DatasetConfig()) == "ylecun/mnist"  # no env: the Hub id
    monkeypatch.setenv("HF_DDPM_DATA_DIR", str(sample_data))
    local = str((sample_data / "mnist").resolve())
    assert resolve_source(DatasetConfig(name="ylecun/mnist")) == local
    ds, info = load_image_dataset(DatasetConfig(split="test", max_samples=5), progress=False)
    assert info.source == local and ds.tensors[1].tolist() == [7, 2, 1, 0, 4]


def test_relative_path_prefers_data_dir_then_cwd(monkeypatch, tmp_path):
    cwd, data_dir = tmp_path / "cwd", tmp_path / "data"
    for folder in (cwd / "mnist", cwd / "textures", data_dir / "mnist"):
        folder.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    assert resolve_source(DatasetConfig(path="mnist")) == str((cwd / "mnist").resolve())
    monkeypatch.setenv("HF_DDPM_DATA_DIR", str(data_dir))
    assert resolve_source(DatasetConfig(path="mnist")) == str((data_dir / "mnist").resolve())
    assert resolve_source(DatasetConfig(path="textures")) == str((cwd / "textures").resolve())


def test_missing_path_and_no_source_are_errors(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"'no/such/folder' does not exist.*dataset\.path.*HF_DDPM_DATA_DIR"):
        resolve_source(DatasetConfig(path="no/such/folder"))
    with pytest.raises(ValueError, match="dataset.path.*dataset.name"):
        resolve_source(DatasetConfig(name=None, path=None))


def test_unreachable_hub_names_dataset_and_fix(monkeypatch):
    # The documented offline switch (HF_HUB_OFFLINE), so this fails at once instead of after retries.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError, match=r"'org/no-sample'.*set dataset\.path or HF_DDPM_DATA_DIR"):
        load_image_dataset(DatasetConfig(name="org/no-sample"), progress=False)


def test_unreachable_hub_falls_back_to_the_bundled_sample_and_says_so(monkeypatch, caplog, mnist_dir):
    """Offline, `ylecun/mnist` trains on the 5,000 digits bundled with hf-ddpm, with a warning naming the
    fix, and the source it reports is the sample (the model card records it)."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("hf_ddpm.data._UNREACHABLE", set())  # the warning comes once per process
    dataset, info = load_image_dataset(DatasetConfig(), progress=False)
    assert info.source == str(mnist_dir) and len(dataset) == 5000
    assert dataset.tensors[1][:5].tolist() == [5, 0, 4, 1, 9]  # MNIST's first training labels
    warning = next(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "'ylecun/mnist'" in warning and "HF_DDPM_DATA_DIR" in warning and "sample bundled" in warning


def test_find_parquet_splits_layouts(tmp_path):
    for name in ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet", "valid/0.parquet"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    (tmp_path / "test.parquet").touch()
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "train-x.parquet").touch()
    splits = find_parquet_splits(tmp_path)
    assert {k: [Path(f).name for f in v] for k, v in splits.items()} == {
        "train": ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"],
        "valid": ["0.parquet"],
        "test": ["test.parquet"],
    }


# --- bad input -------------------------------------------------------------------------------------


def test_corrupt_png_names_its_row(tmp_path):
    images = _distinct_images(5)
    images[3] = b"\x89PNG\r\n\x1a\n but then nothing an image would have"
    _write_split(tmp_path, "train", images, labels=[0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match=r"row 3, column 'image'.*expected PNG/JPEG bytes of an image"):
        load_image_dataset(DatasetConfig(path=str(tmp_path)), progress=False)
    # The rows before it are fine: max_samples=3 never reaches the broken one.
    ds, _ = load_image_dataset(DatasetConfig(path=str(tmp_path), max_samples=3, image_size=4), progress=False)
    assert ds.tensors[0].shape == (3, 1, 4, 4)


def test_empty_split_is_an_error(tmp_path):
    _write_split(tmp_path, "train", _distinct_images(2), labels=[0, 1])
    _write_split(tmp_path, "test", [], labels=[])
    for streaming in (False, True):
        cfg = DatasetConfig(path=str(tmp_path), split="test", streaming=streaming)
        with pytest.raises(ValueError, match="split 'test' .* is empty"):
            load_image_dataset(cfg, progress=False)


def test_missing_image_column_names_it(tmp_path):
    _write_split(tmp_path, "train", _distinct_images(2), labels=[0, 1], column="picture")
    for streaming in (False, True):
        cfg = DatasetConfig(path=str(tmp_path), streaming=streaming)
        with pytest.raises(ValueError, match=r"image column 'image' not found.*\['picture', 'label'\]"):
            load_image_dataset(cfg, progress=False)


def test_missing_label_column_gives_minus_one(tmp_path):
    _write_split(tmp_path, "train", _distinct_images(3))
    ds, info = load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4), progress=False)
    assert ds.tensors[1].tolist() == [-1, -1, -1] and info.class_names is None


def test_string_label_column_warns_and_gives_minus_one(tmp_path):
    Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in _distinct_images(2)], "label": ["cat", "dog"]},
        features=Features({"image": Image(), "label": Value("string")}),
    ).to_parquet(str(tmp_path / "train-0.parquet"))
    with pytest.warns(UserWarning, match="label column 'label'.*set to -1"):
        ds, _ = load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4), progress=False)
    assert ds.tensors[1].tolist() == [-1, -1]


def test_colour_row_in_grayscale_split_is_not_silently_converted(tmp_path):
    gray = _png(np.full((4, 4), 50, np.uint8))
    colour = _png(np.stack([np.full((4, 4), v, np.uint8) for v in (255, 0, 0)], axis=-1))
    _write_split(tmp_path, "train", [gray, gray, colour])
    with pytest.raises(ValueError, match=r"row 2, column 'image': colour image .*dataset\.channels"):
        load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4), progress=False)
    ds, _ = load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4, channels=3), progress=False)
    assert (
        ds.tensors[0][2, :, 0, 0].tolist() == [255, 0, 0] and ds.tensors[0][0, :, 0, 0].tolist() == [50] * 3
    )
    ds, _ = load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4, channels=1), progress=False)
    assert ds.tensors[0][2, 0, 0, 0].item() == 76  # ITU-R 601 luma of pure red


def _solid(colour: tuple[int, ...], size: tuple[int, int]) -> bytes:
    """A PNG of one colour: (v,) grayscale, (r, g, b) RGB; size is (width, height)."""
    mode = "L" if len(colour) == 1 else "RGB"
    buffer = io.BytesIO()
    PILImage.new(mode, size, colour if mode == "RGB" else colour[0]).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_rgb_split_stays_rgb_unless_channels_1_asks_for_gray(tmp_path):
    # channels unset: the data's own 3 channels, colour intact (the model is then built with 3 channels);
    # channels: 1 is the documented, explicit conversion to ITU-R 601 luma.
    _write_split(tmp_path, "train", [_solid((255, 0, 0), (4, 4)), _solid((0, 0, 255), (4, 4))])
    ds, info = load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4), progress=False)
    assert info.channels == 3 and ds.tensors[0][:, :, 0, 0].tolist() == [[255, 0, 0], [0, 0, 255]]
    ds, info = load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4, channels=1), progress=False)
    assert info.channels == 1 and ds.tensors[0][:, 0, 0, 0].tolist() == [76, 29]
    # A gray row in a colour split is replicated to RGB, which loses nothing.
    _write_split(tmp_path, "mixed", [_solid((0, 255, 0), (4, 4)), _solid((90,), (4, 4))])
    ds, _ = load_image_dataset(DatasetConfig(path=str(tmp_path), split="mixed", image_size=4), progress=False)
    assert ds.tensors[0][:, :, 0, 0].tolist() == [[0, 255, 0], [90, 90, 90]]


@pytest.mark.parametrize("streaming", [False, True])
def test_mixed_image_sizes_in_one_split_all_become_image_size(tmp_path, streaming):
    # Each row is resized (shorter side) and centre-cropped on its own: one tensor shape, values kept.
    sizes = [(8, 8), (4, 4), (12, 6), (5, 20), (3, 3)]
    _write_split(tmp_path, "train", [_solid((40 * i,), size) for i, size in enumerate(sizes)])
    cfg = DatasetConfig(path=str(tmp_path), image_size=4, streaming=streaming)
    ds, info = load_image_dataset(cfg, progress=False)
    images = ds.tensors[0] if not streaming else _stream_all(ds)[0]
    assert images.shape == (5, 1, 4, 4) and info.image_size == 4
    assert sorted(int(v) for v in images[:, 0].flatten(1).unique(dim=1).flatten()) == [0, 40, 80, 120, 160]


def test_check_batches_refuses_a_split_smaller_than_a_global_batch():
    check_batches(64, 32, 2)
    check_batches(None, 32, 2)  # streaming with an unknown length
    with pytest.raises(
        ValueError, match=r"63 rows, fewer than one global batch \(32 per process x 2 .*= 64\)"
    ):
        check_batches(63, 32, 2)


# --- streaming -------------------------------------------------------------------------------------


def _stream_all(stream: StreamingImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = list(stream)
    return torch.stack([img for img, _ in items]), torch.stack([lab for _, lab in items])


def test_streaming_yields_the_in_memory_rows_shuffled(tmp_path):
    n = 40
    _write_split(tmp_path, "train", _distinct_images(n), labels=[i % 3 for i in range(n)])
    cfg = DatasetConfig(path=str(tmp_path), image_size=4)
    memory, info = load_image_dataset(cfg, progress=False)
    stream, stream_info = load_image_dataset(
        DatasetConfig(path=str(tmp_path), image_size=4, streaming=True), seed=0
    )
    assert (stream_info.num_rows, stream_info.channels, stream_info.class_names) == (n, 1, ["a", "b", "c"])

    images, labels = _stream_all(stream)
    assert images.dtype == torch.uint8 and images.shape == (n, 1, 4, 4) and labels.dtype == torch.int64
    assert _as_multiset(images, labels) == _as_multiset(*memory.tensors)
    assert not torch.equal(images, memory.tensors[0])  # shuffled

    stream.set_epoch(1)
    images_1, labels_1 = _stream_all(stream)
    assert _as_multiset(images_1, labels_1) == _as_multiset(*memory.tensors)
    assert not torch.equal(images_1, images)  # a new order each epoch


def test_streaming_ranks_and_workers_see_disjoint_shards_covering_everything(tmp_path):
    n = 30
    _write_split(tmp_path, "train", _distinct_images(n), labels=[i % 3 for i in range(n)])
    cfg = DatasetConfig(path=str(tmp_path), image_size=4, streaming=True, shuffle_buffer_size=8)
    everything = _as_multiset(*load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4))[0].tensors)

    shards = [_as_multiset(*_stream_all(load_image_dataset(cfg, rank=r, world_size=2)[0])) for r in (0, 1)]
    assert sum(shards[0].values()) + sum(shards[1].values()) == n
    assert not (shards[0] & shards[1]) and shards[0] + shards[1] == everything

    # DataLoader workers split a 1-file stream by example instead of leaving a worker idle.
    stream, _ = load_image_dataset(cfg)
    loader = torch.utils.data.DataLoader(stream, batch_size=4, num_workers=2)
    batches = list(loader)
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert _as_multiset(images, labels) == everything


def test_streaming_max_samples_takes_the_first_rows(tmp_path):
    _write_split(tmp_path, "train", _distinct_images(20), labels=[i % 3 for i in range(20)])
    memory, _ = load_image_dataset(DatasetConfig(path=str(tmp_path), image_size=4, max_samples=6))
    stream, info = load_image_dataset(
        DatasetConfig(path=str(tmp_path), image_size=4, max_samples=6, streaming=True)
    )
    assert info.num_rows == 6
    assert _as_multiset(*_stream_all(stream)) == _as_multiset(*memory.tensors)


# --- conversions -----------------------------------------------------------------------------------


def test_model_range_round_trip():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    y = to_model_range(x)
    assert y.dtype == torch.float32 and y.min().item() == -1.0 and y.max().item() == 1.0
    assert y.flatten()[0].item() == -1.0 and y.flatten()[255].item() == 1.0
    assert torch.equal(to_uint8(y), x)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]  # clamped, not wrapped


def test_preprocess_image_modes():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 40)
    rgba[..., 3] = [[255, 0], [128, 255]]
    out = preprocess_image(PILImage.fromarray(rgba, mode="RGBA"), image_size=2)
    assert out.shape == (3, 2, 2)
    assert out[:, 0, 1].tolist() == [0, 0, 0]  # fully transparent -> black
    assert out[:, 1, 0].tolist() == [100, 50, 20]  # half transparent -> colour x alpha

    wide = PILImage.fromarray(np.array([[0, 257, 65535, 32896]], np.uint16).reshape(2, 2))
    assert wide.mode.startswith("I")
    assert preprocess_image(wide, image_size=2).flatten().tolist() == [0, 1, 255, 128]  # scaled, not clipped

    palette = PILImage.new("P", (3, 3))
    palette.putpalette([v for g in range(256) for v in (g, g, g)])
    assert preprocess_image(palette, image_size=3).shape == (1, 3, 3)  # gray palette stays 1 channel
    assert preprocess_image(PILImage.new("CMYK", (3, 3)), image_size=3).shape == (3, 3, 3)
    # Not square: shorter side to 4, then the centre.
    tall = np.zeros((8, 4), np.uint8)
    tall[2:6] = 255
    assert preprocess_image(PILImage.fromarray(tall), image_size=4).flatten().tolist() == [255] * 16
