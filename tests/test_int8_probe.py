"""`benchmarks.int8_probe` end to end on the tiny preset: the denoiser really is quantized (QDQ
nodes around int8 convolutions), the shared orchestration runs it, and the report measures what
it claims (a decode that differs from fp32, scored against the same crops)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import int8_probe

CROP, MAX_SIDE = 32, 40


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8-photos")
    rng = np.random.default_rng(0)
    files = []
    for i, split in enumerate(("train", "train", "val", "val")):
        y, x = np.mgrid[0:MAX_SIDE, 0:MAX_SIDE + 8]
        rgb = np.stack(
            [128 + 90 * np.sin(x / rng.uniform(3, 8) + c) * np.cos(y / rng.uniform(4, 9)) for c in range(3)], -1
        )
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(root / f"p{i}.png")
        files.append({"file": f"p{i}.png", "id": f"t/p{i}", "source": "test", "source_version": "1",
                      "licence": "CC0-1.0", "split": split})
    (root / "manifest.json").write_text(json.dumps({"version": 1, "files": files}))
    return root


def test_probe_quantizes_runs_and_scores_the_int8_denoiser(tiny_checkpoint, photo_set, tmp_path, monkeypatch):
    monkeypatch.setenv("DGAE_CACHE_DIR", str(tmp_path / "cache"))
    r = int8_probe.probe(tiny_checkpoint, str(photo_set), threads=1, crop=CROP, max_side=MAX_SIDE)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= set(r["quantized_graph_ops"])
    assert r["crops"] == 2 and all(ms > 0 for ms in r["ms_per_pass"].values())
    fp32, int8 = r["quality"]["fp32"], r["quality"]["int8"]
    assert r["psnr_loss_db"] == pytest.approx(fp32["psnr"] - int8["psnr"])
    assert r["max_level_diff"] >= 1  # quantization changed the decode (fp32 would be 0 levels off itself)
    assert r["within_bar"] == (r["psnr_loss_db"] <= 0.2 and r["lpips_loss"] <= 0.005 and r["max_level_diff"] <= 1)
