"""Write a model card (weights/MODEL_CARD.md) from a training run folder and a `dgae eval` output:

    python -m evaluation.model_card --run runs/default --eval weights/eval --out weights/MODEL_CARD.md \
        [--checkpoint weights/dgae-small-f8c4.safetensors] [--data data/photos]

Sources: the checkpoint's metadata (config, trained steps, training recipe), ``metrics.jsonl`` of
the run (losses, wall time; also drawn as ``loss_curve.png`` next to the card), the photo set's
``manifest.json`` (counts, sources, licences), ``eval.json`` (table, plot and grid), and
``/proc/cpuinfo`` of the machine writing the card for the hardware line (override with
``--hardware`` when the card is written elsewhere).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path

from dgae.errors import DGAEError, InputError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EMA_FILE = "ema.safetensors"
MANIFEST_NAME = "manifest.json"
LOSS_PLOT_NAME = "loss_curve.png"
CPUINFO = Path("/proc/cpuinfo")
LOSS_KEYS = ("loss", "loss_v", "loss_kl", "loss_lpips")
SUMMARY_KEYS = LOSS_KEYS + ("psnr_x0hat",)
RUN_METADATA_KEYS = ("trained_steps", "train_config")  # taken from RUN/ema.safetensors if the file lacks them
FINAL_WINDOW = 10  # final losses = mean over the last this-many logged entries
PLOT_SIZE_IN = (10.0, 4.0)
PLOT_DPI = 100
SMOOTH_WINDOW = 10  # moving average drawn over the raw loss curve
SECONDS_PER_MINUTE = 60.0


# --------------------------------------------------------------------------------- inputs
def read_metrics(path: Path) -> list[dict]:
    """The JSONL training log; unreadable lines (a run killed mid-write) are skipped with a warning."""
    if not path.is_file():
        raise InputError(f"training metrics not found: {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            log.warning("%s:%d: skipping a malformed line", path, number)
    return rows


def hardware_description(cpuinfo: Path = CPUINFO) -> str:
    model = "unknown CPU"
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores visible (CPU only)"


def read_manifest(data: Path) -> dict | None:
    path = data if data.suffix == ".json" else data / MANIFEST_NAME
    if not path.is_file():
        log.warning("no photo manifest at %s; the card will have no data/licence section", path)
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"cannot read photo manifest {path}: {exc}") from exc


def read_eval(eval_dir: Path) -> dict:
    path = eval_dir / "eval.json"
    if not path.is_file():
        raise InputError(f"{path} not found; run 'dgae eval --out {eval_dir}' first")
    return json.loads(path.read_text())


# --------------------------------------------------------------------------------- sections
def final_losses(rows: list[dict]) -> dict[str, float]:
    tail = rows[-FINAL_WINDOW:]
    return {k: sum(r[k] for r in tail if k in r) / max(1, sum(k in r for r in tail))
            for k in SUMMARY_KEYS if any(k in r for r in tail)}


def write_loss_plot(rows: list[dict], path: Path) -> Path:
    """Total loss and its parts vs step (log y), raw and moving-averaged."""
    import numpy as np  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, keys in zip(axes, (("loss", "loss_v", "loss_lpips"), ("loss_kl",))):
        for key in keys:
            pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r]
            if not pts:
                continue
            steps, values = map(np.asarray, zip(*pts))
            line, = ax.plot(steps, values, alpha=0.3)
            if len(values) >= SMOOTH_WINDOW:
                smooth = np.convolve(values, np.ones(SMOOTH_WINDOW) / SMOOTH_WINDOW, mode="valid")
                ax.plot(steps[SMOOTH_WINDOW - 1:], smooth, color=line.get_color(), label=key)
            else:
                line.set_label(key)
        ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"training losses ({SMOOTH_WINDOW}-point moving average over the raw curve)")
    fig.savefig(path)
    return path


def data_section(manifest: dict | None) -> list[str]:
    if manifest is None:
        return ["Photo manifest not available."]
    files = manifest.get("files", [])
    counts = Counter(f.get("split") for f in files)
    lines = [f"{len(files)} photographs ({counts.get('train', 0)} train / {counts.get('val', 0)} validation, "
             "split by photograph), built offline by `python -m training.data.fetch` from Debian wallpaper "
             "packages and the sample images of scikit-image / scikit-learn.", "",
             "| source | version | licence | train | val |", "|---|---|---|---|---|"]
    groups = Counter((f.get("source"), f.get("source_version"), f.get("licence"), f.get("split")) for f in files)
    for source, version, licence in sorted({k[:3] for k in groups}, key=lambda k: tuple(map(str, k))):
        lines.append(f"| {source} | {version} | {licence} | {groups[(source, version, licence, 'train')]} "
                     f"| {groups[(source, version, licence, 'val')]} |")
    lines += ["", "Licence notes: the photos keep their own licences (above; per file in `data/photos/manifest.json`). "
              "Attribution (CC-BY) and share-alike (CC-BY-SA, GPL-2+) terms apply to the images themselves; "
              "whether trained weights are a derivative work of them is unsettled -- check before redistributing."]
    return lines


def _relative(target: Path, card: Path) -> str:
    return os.path.relpath(target.resolve(), card.resolve().parent)


def render(checkpoint_info: dict, rows: list[dict], manifest: dict | None, result: dict,
           eval_dir: Path, out: Path, loss_plot: Path | None, hardware: str) -> str:
    from evaluation.report import GRID_NAME, PLOT_NAME, conventions, markdown_table  # noqa: PLC0415

    meta = checkpoint_info.get("metadata", {})
    train_cfg = json.loads(meta["train_config"]) if "train_config" in meta else {}
    params = checkpoint_info["params"]
    f, c = checkpoint_info["downsample_factor"], checkpoint_info["latent_channels"]
    elapsed = max((r.get("elapsed_s", 0.0) for r in rows), default=0.0)
    last_step = max((r.get("step", 0) for r in rows), default=0)
    losses = final_losses(rows)
    best = next((r for r in result["rows"] if r["steps"] == result["best_steps"]), None)
    base = next((r for r in result["rows"] if r["method"] == "thumbnail"), None)
    lines = [
        f"# DGAE `{checkpoint_info['preset']}` -- model card", "",
        "Diffusion-Guided Autoencoder image tokenizer: SD-VAE KL encoder + ADM U-Net decoder trained with "
        "conditional flow matching; images are encoded to latents and decoded by a few-step sampler.", "",
        "## Model", "",
        f"- Preset `{checkpoint_info['preset']}`: downsampling f = {f}, latent channels c = {c} "
        f"(a 256x256 image -> {c}x{256 // f}x{256 // f} latent).",
        f"- Parameters: encoder {params['encoder'] / 1e6:.2f} M, decoder {params['decoder'] / 1e6:.2f} M, "
        f"total {params['total'] / 1e6:.2f} M.",
        f"- File: `{Path(checkpoint_info['path']).name}`, {checkpoint_info['bytes'] / 1e6:.1f} MB, "
        f"sha256 `{checkpoint_info['sha256']}`.",
        f"- Default decode steps: {checkpoint_info['config']['sampler']['default_steps']} "
        f"(best by LPIPS in the evaluation below: {result['best_steps']}).", "",
        "## Training", "",
        f"- Steps: {meta.get('trained_steps', last_step)}; wall time {elapsed / SECONDS_PER_MINUTE:.1f} min "
        f"(last logged step {last_step}).",
        f"- Hardware: {hardware}.",
    ]
    if train_cfg:
        keys = ("crop_size", "max_side", "batch_size", "lr", "lr_min", "warmup_steps", "ema_decay",
                "alpha", "beta", "eta", "lpips_net", "t_sampling", "t_one_prob")
        lines.append("- Recipe: " + ", ".join(f"{k}={train_cfg[k]}" for k in keys if k in train_cfg) + ".")
    if losses:
        lines.append("- Final losses (mean of the last %d logged steps): " % min(FINAL_WINDOW, len(rows))
                     + ", ".join(f"{k} {v:.4g}" for k, v in losses.items()) + ".")
    if loss_plot is not None:
        lines += ["", f"![training losses]({_relative(loss_plot, out)})"]
    lines += ["", "## Data", "", *data_section(manifest), "",
              "## Evaluation", "", markdown_table(result), "", conventions(result), "",
              f"![PSNR and LPIPS vs steps]({_relative(eval_dir / PLOT_NAME, out)})"]
    if (eval_dir / GRID_NAME).is_file():
        lines += ["", f"![original | reconstruction | thumbnail]({_relative(eval_dir / GRID_NAME, out)})", "",
                  f"Columns: original | reconstruction ({result['best_steps']} steps) | thumbnail baseline."]
    lines += ["", "## Limitations", "",
              "- A small model (about 5 M parameters) trained briefly on a few dozen photographs: expect "
              "soft detail and texture hallucination; it is a serving default, not a paper-quality tokenizer.",
              f"- Evaluated on {result['crops']} crops of {len(result.get('photos', [])) or 'few'} validation photos: "
              "the numbers carry wide error bars, KID/FID especially."]
    if best is not None and base is not None:
        wins = best["lpips"] < base["lpips"] and _num(best["psnr"]) > _num(base["psnr"])
        verdict = "beats" if wins else "does NOT beat (on both PSNR and LPIPS)"
        lines.append(
            f"- At {result['best_steps']} decode step(s) the model {verdict} the equal-size thumbnail baseline "
            f"(PSNR {_num(best['psnr']):.2f} vs {_num(base['psnr']):.2f} dB, "
            f"LPIPS {best['lpips']:.4f} vs {base['lpips']:.4f})."
        )
    return "\n".join(lines) + "\n"


def _num(value) -> float:
    return float(value)  # eval.json stores infinities as the string "inf"


# --------------------------------------------------------------------------------- CLI
def write_model_card(run: Path, eval_dir: Path, out: Path, checkpoint: Path | None = None,
                     data: Path = Path("data/photos"), hardware: str | None = None) -> Path:
    from dgae.checkpoint import describe, read_metadata  # noqa: PLC0415

    result, rows = read_eval(eval_dir), read_metrics(run / METRICS_FILE)  # cheap checks first
    info = describe(checkpoint or run / EMA_FILE)
    if (run / EMA_FILE).is_file():  # a re-saved release file (fp16) may lack the run's training metadata
        run_meta = {k: v for k, v in read_metadata(run / EMA_FILE).items() if k in RUN_METADATA_KEYS}
        info["metadata"] = {**run_meta, **info["metadata"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    loss_plot = write_loss_plot(rows, out.parent / LOSS_PLOT_NAME) if rows else None
    text = render(info, rows, read_manifest(data), result, eval_dir, out, loss_plot,
                  hardware or hardware_description())
    out.write_text(text)
    log.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="training run folder (metrics.jsonl, ema.safetensors)")
    p.add_argument("--eval", type=Path, required=True, help="`dgae eval --out` folder")
    p.add_argument("--out", type=Path, default=Path("weights/MODEL_CARD.md"))
    p.add_argument("--checkpoint", type=Path, default=None, help="the released file (default: RUN/ema.safetensors)")
    p.add_argument("--data", type=Path, default=Path("data/photos"), help="photo set folder or manifest.json")
    p.add_argument("--hardware", default=None, help="training hardware line (default: this machine's CPU)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        write_model_card(args.run, args.eval, args.out, args.checkpoint, args.data, args.hardware)
    except DGAEError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
