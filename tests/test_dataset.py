"""ImageFolderDataset / make_loader on tiny synthetic images (pixel values encode coordinates)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from training.data.dataset import ImageFolderDataset, grid_offsets, make_loader
from dgae.errors import ConfigError, InputError

CROP = 16


def _ramp(width: int, height: int) -> Image.Image:
    """R encodes x, G encodes y (both < 256), B constant: crops can be located exactly."""
    x = np.tile(np.arange(width, dtype=np.uint8), (height, 1))
    y = np.tile(np.arange(height, dtype=np.uint8)[:, None], (1, width))
    return Image.fromarray(np.stack([x, y, np.full_like(x, 7)], axis=-1))


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    _ramp(64, 40).save(tmp_path / "a" / "ramp.png")
    _ramp(48, 48).save(tmp_path / "a" / "b" / "sq.webp", lossless=True)
    _ramp(10, 12).save(tmp_path / "tiny.png")  # smaller than the crop: upscaled
    Image.new("RGB", (30, 20), (255, 0, 0)).save(tmp_path / "red.JPG", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def _to_uint(t: torch.Tensor) -> np.ndarray:
    return ((t + 1) * 127.5).round().to(torch.uint8).numpy()


def test_folder_is_recursive_and_items_are_crops(folder):
    ds = ImageFolderDataset(folder, crop_size=CROP, train=False, max_side=64)
    assert [p.name for p in ds.files] == ["sq.webp", "ramp.png", "red.JPG", "tiny.png"]
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (3, CROP, CROP) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
    assert min(ds._load(3).shape[1:]) == CROP  # tiny.png: short side upscaled to the crop


def test_eval_centre_and_grid_crops_are_deterministic(folder):
    centre = ImageFolderDataset(folder / "a", crop_size=CROP, train=False, max_side=64)
    ramp = _to_uint(centre[1])  # files: b/sq.webp, ramp.png (64x40): centre crop starts at x=24, y=12
    assert ramp[0, 0, 0] == 24 and ramp[1, 0, 0] == 12 and ramp[0, 0, -1] == 24 + CROP - 1
    grid = ImageFolderDataset(folder / "a", crop_size=CROP, train=False, crops_per_image=4, max_side=64)
    corners = {(int(_to_uint(grid[4 + k])[0, 0, 0]), int(_to_uint(grid[4 + k])[1, 0, 0])) for k in range(4)}
    assert corners == {(0, 0), (48, 0), (0, 24), (48, 24)}
    assert torch.equal(grid[5], grid[5])
    assert grid_offsets(0, 1, 40, 64, CROP) == (12, 24)


def test_train_crops_are_random_and_sometimes_flipped(folder):
    ds = ImageFolderDataset(folder / "a", crop_size=CROP, train=True, crops_per_image=8, max_side=64)
    torch.manual_seed(0)
    crops = [_to_uint(ds[8 + k]) for k in range(8)]  # ramp.png
    steps = {int(np.sign(np.diff(c[0, 0].astype(int))).mean()) for c in crops}
    assert steps == {1, -1}  # x increasing (plain) and decreasing (flipped) crops both occur
    assert len({(int(c[0, 0].min()), int(c[1, 0, 0])) for c in crops}) > 1
    torch.manual_seed(0)
    assert np.array_equal(_to_uint(ds[8]), crops[0])


def test_scale_jitter_and_max_side_pre_resize(tmp_path):
    _ramp(200, 100).save(tmp_path / "big.png")
    ds = ImageFolderDataset(tmp_path, crop_size=CROP, train=True, max_side=50, scale_range=(1.0, 3.0))
    assert tuple(ds._load(0).shape) == (3, 50, 100)
    assert ds._load(0) is ds._load(0)  # decoded once, then served from the cache
    torch.manual_seed(0)
    assert all(ds[0].shape == (3, CROP, CROP) for _ in range(5))


def test_lru_cache_is_bounded(folder):
    ds = ImageFolderDataset(folder, crop_size=CROP, train=False, max_side=64, cache_bytes=3 * 48 * 48 + 1)
    for i in range(len(ds)):
        ds[i]
    assert ds._cached_bytes <= ds.cache_bytes and 0 < len(ds._cache) < len(ds.files)


def test_manifest_split_selection(tmp_path):
    files = []
    for i, split in enumerate(["train", "val", "train"]):
        _ramp(32 + i, 32).save(tmp_path / f"p{i}.png")
        files.append({"file": f"p{i}.png", "split": split})
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    assert len(ImageFolderDataset(tmp_path, "train", crop_size=CROP)) == 2
    val = ImageFolderDataset(tmp_path / "manifest.json", "val", crop_size=CROP, train=False)
    assert [p.name for p in val.files] == ["p1.png"]
    with pytest.raises(ConfigError):
        ImageFolderDataset(tmp_path, "test", crop_size=CROP)


def test_split_subfolder_and_errors(tmp_path):
    (tmp_path / "val").mkdir()
    _ramp(32, 32).save(tmp_path / "val" / "v.png")
    _ramp(32, 32).save(tmp_path / "t.png")
    assert [p.name for p in ImageFolderDataset(tmp_path, "val", crop_size=CROP).files] == ["v.png"]
    with pytest.raises(ConfigError):
        ImageFolderDataset(tmp_path, crop_size=64, max_side=32)
    with pytest.raises(ConfigError):
        ImageFolderDataset(tmp_path, crop_size=CROP, scale_range=(2.0, 1.0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError):
        ImageFolderDataset(tmp_path / "empty", crop_size=CROP)


def test_loader_reproducible_with_workers(folder):
    ds = ImageFolderDataset(folder, crop_size=CROP, train=True, crops_per_image=2, max_side=64)

    def epoch(seed):
        return torch.cat(list(make_loader(ds, batch_size=4, workers=2, distributed=False, seed=seed)))

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert a.shape == (8, 3, CROP, CROP)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loader_distributed_uses_sampler(folder, tmp_path):
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    ds = ImageFolderDataset(folder, crop_size=CROP, train=False, max_side=64)
    with pytest.raises(ConfigError):
        make_loader(ds, 2, 0, distributed=True, seed=0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = make_loader(ds, 2, 0, distributed=True, seed=0)
        assert isinstance(loader.sampler, DistributedSampler)
        assert sum(len(b) for b in loader) == len(ds)  # eval: no shuffle, no drop_last
    finally:
        dist.destroy_process_group()
