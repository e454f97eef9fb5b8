"""Training: objective pieces, lr schedule, and exact resume of step count / schedule / state."""
import json
import math

import pytest
import torch

from training.config import TrainConfig, get_recipe
from training.objective import kl_per_element, lr_at, sample_t


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(lr=1e-3, lr_min=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(cfg, 0) == pytest.approx(1e-4)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 60) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(cfg, 110) == pytest.approx(1e-4)
    assert lr_at(cfg, 500) == pytest.approx(1e-4)


def test_t_sampling_and_kl():
    g = torch.Generator().manual_seed(0)
    t = sample_t(TrainConfig(t_sampling="uniform", t_one_prob=0.5), 4000, g)
    assert 0 < t.min() and t.max() <= 1 and 0.4 < (t == 1).float().mean() < 0.6
    tl = sample_t(TrainConfig(t_sampling="logit_normal"), 4000, g)
    assert abs(tl.mean() - 0.5) < 0.03 and tl.std() < 0.25
    assert kl_per_element(torch.zeros(2, 4), torch.zeros(2, 4)) == 0
    assert kl_per_element(torch.ones(2, 4), torch.zeros(2, 4)) == pytest.approx(0.5)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    """A tiny photo set in manifest form: 3 train + 1 val synthetic 'photos'."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        yy, xx = np.mgrid[0:96, 0:128]
        img = np.stack([xx * (i + 1), yy * 2, xx + yy], -1) % 256 + rng.integers(0, 30, (96, 128, 3))
        name = f"p{i}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name)
        files.append({"file": name, "split": "val" if i == 3 else "train"})
    (root / "manifest.json").write_text(json.dumps({"version": 1, "files": files}))
    return root


def test_train_resume_continues_schedule_and_step(photo_dir, tmp_path):
    from dgae.checkpoint import load_checkpoint
    from training.trainer import Trainer

    cfg = get_recipe("tiny")  # max_steps 20
    out = tmp_path / "run"
    first = Trainer(cfg, str(photo_dir), out, device="cpu")
    step_fn = first.train_step

    def interrupt_at_10(x0):  # as if SIGTERM arrived during step 10
        parts = step_fn(x0)
        first._stop = first.step + 1 >= 10
        return parts

    first.train_step = interrupt_at_10
    assert first.train() == 10
    state_ema = {k: v.clone() for k, v in first.ema.state_dict().items()}
    resumed = Trainer(cfg, str(photo_dir), out, device="cpu")
    resumed.maybe_resume()
    assert resumed.step == 10
    for k, v in resumed.ema.state_dict().items():
        assert torch.equal(v, state_ema[k]), k
    assert len(resumed.opt.state) == len(first.opt.state) > 0
    assert resumed.train() == 20
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and steps[-1] == 20 and len(set(steps)) == len(steps)
    for r in rows:  # the schedule after resuming is the uninterrupted one
        assert r["lr"] == pytest.approx(lr_at(cfg, r["step"] - 1))
    model = load_checkpoint(out / "ema.safetensors")
    assert model.config.name == "tiny"
    assert (out / "samples").is_dir() and any((out / "samples").iterdir())


def test_gpu_train_script_sizes_the_run_and_writes_fp16_ema(photo_dir, tiny_checkpoint, tmp_path):
    """scripts/gpu_train_default.sh on CPU (tiny recipe): the probe sizes max_steps from the
    measured rate, the run stops there, and an fp16 EMA checkpoint with the step count comes out."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors import safe_open

    from dgae.checkpoint import read_metadata

    repo = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    env = dict(os.environ, PYTHON=sys.executable, RECIPE="tiny", INIT=str(tiny_checkpoint), PROBE_STEPS="10",
               DEVICE="cpu", STARTUP_S="0", TRAIN_ARGS="--workers 0")
    proc = subprocess.run([str(repo / "scripts/gpu_train_default.sh"), str(photo_dir), str(run), "0.05"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = int((run / "max_steps").read_text())
    assert steps >= 1 and f"sized the run to {steps} steps" in proc.stdout
    assert not (run / "probe").exists()
    meta = read_metadata(run / "ema-fp16.safetensors")
    assert meta["weights"] == "ema" and 1 <= int(meta["trained_steps"]) <= steps
    with safe_open(str(run / "ema-fp16.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float16 in dtypes and torch.float32 not in dtypes
