"""`python -m benchmarks.int8_probe`: what int8 would buy the default CPU decode, and what it
would cost in quality, measured in one run, so that the decision not to ship it can be re-checked.

The cached ONNX export's denoiser (``export.cache.cached_onnx_dir``) is quantized by ONNX Runtime's
static QDQ quantizer: convolution weights int8 per output channel, activations uint8 (the U8S8
kernels x86 runs fastest), MinMax ranges calibrated on the denoiser's real inputs, recorded during
fp32 decodes of training-split crops at the default plan. The quantized graph goes into a copy of
the export with its own manifest, so the ONNX Runtime backend and the shared orchestration run it
exactly as they run the fp32 one. On the validation crops (the model card's protocol) it reports:
ms per denoiser pass, fp32 and int8 interleaved; PSNR / LPIPS of the default-steps decode against
the originals, for both; and the largest |int8 - fp32| in 8-bit levels. The bar for shipping int8
(issue 14): at most 0.2 dB PSNR and 0.005 LPIPS worse, and the default decode within one level of
the torch backend.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from backends.onnxruntime_backend import OnnxRuntimeBackend
from dgae.checkpoint import resolve_checkpoint
from dgae.config import IMAGE_CHANNELS
from dgae.hashing import file_sha256
from evaluation.evaluate import EvalSettings, load_crops, quantize, score, summarize
from export import manifest as mf
from export.cache import cached_onnx_dir

from .report import format_table, time_repeats

log = logging.getLogger(__name__)

UINT8_LEVELS = 255
CALIBRATION_CROPS = 16
TIMING_REPEATS = 5
MAX_PSNR_LOSS_DB, MAX_LPIPS_LOSS = 0.2, 0.005
DEFAULT_CROP, DEFAULT_MAX_SIDE = 256, 512  # the model card's evaluation crops
QUANTIZED_OPS = ["Conv"]  # the network's FLOPs; attention and norms stay fp32


def crops(data: str, split: str, crop: int, max_side: int, n: int | None = None) -> torch.Tensor:
    """One centre crop per photo of ``split``, the model card's protocol."""
    settings = EvalSettings(data=data, split=split, crop=crop, max_side=max_side, crops_per_image=1, steps=(1,),
                            seed=0, batch_size=1).validate()
    x, _ = load_crops(settings)
    return x[:n] if n else x


def record_denoiser_inputs(backend: OnnxRuntimeBackend, images: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """The denoiser's feeds during fp32 decodes of ``images`` at the default plan."""
    feeds: list[dict[str, np.ndarray]] = []
    denoise = backend.denoise

    def recording(buf: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        feeds.append({"x_t": buf[:, :IMAGE_CHANNELS].numpy().copy(), "t": t.numpy().copy(),
                      "z": buf[:, IMAGE_CHANNELS:].numpy().copy()})
        return denoise(buf, t)

    backend.denoise = recording  # instance attribute: the shared decode looks it up per call
    try:
        for i in range(len(images)):
            backend.decode(backend.encode(images[i:i + 1]), seeds=[i], tile="off")
    finally:
        del backend.denoise
    return feeds


def quantized_export(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,  # noqa: PLC0415
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    class Feeds(CalibrationDataReader):
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    manifest = mf.read_manifest(src)
    dst.mkdir(parents=True)
    shutil.copy2(src / manifest.graphs[mf.ENCODER].file, dst)
    pre, out = dst / "denoiser-pre.onnx", dst / manifest.graphs[mf.DENOISER].file
    quant_pre_process(str(src / manifest.graphs[mf.DENOISER].file), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=QUANTIZED_OPS, calibrate_method=CalibrationMethod.MinMax)
    pre.unlink()
    graphs = {mf.ENCODER: manifest.graphs[mf.ENCODER],
              mf.DENOISER: dataclasses.replace(manifest.graphs[mf.DENOISER], sha256=file_sha256(out))}
    mf.write_manifest(dst, dataclasses.replace(manifest, graphs=graphs, validation=[]))  # fp32 parity rows do not apply
    return dst


def probe(checkpoint: Path, data: str, threads: int = 0, crop: int = DEFAULT_CROP,
          max_side: int = DEFAULT_MAX_SIDE) -> dict:
    """Quantize, calibrate, time and score (see the module docstring); the numbers as a dict."""
    from training.metrics.lpips import LPIPS  # noqa: PLC0415

    src = cached_onnx_dir(checkpoint)
    fp32 = OnnxRuntimeBackend(src, threads=threads, use_unrolled=False, checkpoint_sha256=file_sha256(checkpoint))
    with tempfile.TemporaryDirectory() as tmp:
        feeds = record_denoiser_inputs(fp32, crops(data, "train", crop, max_side, CALIBRATION_CROPS))
        q_dir = quantized_export(src, Path(tmp) / "int8", feeds)
        q_ops = sorted({n.op_type for n in _onnx_nodes(q_dir / fp32.manifest.graphs[mf.DENOISER].file)})
        int8 = OnnxRuntimeBackend(q_dir, threads=threads, use_unrolled=False)
        val = crops(data, "val", crop, max_side)
        latents, seeds = fp32.encode(val), list(range(len(val)))
        runtimes = {"fp32": fp32, "int8": int8}
        images = {name: quantize(b.decode(latents, seeds=seeds, tile="off")) for name, b in runtimes.items()}
        buf = torch.from_numpy(np.concatenate([feeds[0]["x_t"], feeds[0]["z"]], 1))
        t = torch.from_numpy(feeds[0]["t"])
        for b in runtimes.values():  # warm once; the decodes above already ran both sessions
            b.denoise(buf, t)
        ms: dict[str, list[float]] = {name: [] for name in runtimes}
        for _ in range(TIMING_REPEATS):  # interleaved, so load on the machine hits both alike
            for name, b in runtimes.items():
                ms[name] += [1e3 * s for s in time_repeats(lambda b=b: b.denoise(buf, t), 0, 1, lambda: None)]
    lpips = LPIPS("alex")
    quality = {name: summarize(score(val, x, lpips, batch_size=1)) for name, x in images.items()}
    levels = round((images["int8"] - images["fp32"]).abs().max().item() * UINT8_LEVELS / 2)
    loss_db = quality["fp32"]["psnr"] - quality["int8"]["psnr"]
    loss_lpips = quality["int8"]["lpips"] - quality["fp32"]["lpips"]
    return {"crops": len(val), "quantized_graph_ops": q_ops,
            "ms_per_pass": {name: float(np.median(v)) for name, v in ms.items()},
            "quality": quality, "psnr_loss_db": loss_db, "lpips_loss": loss_lpips, "max_level_diff": levels,
            "within_bar": loss_db <= MAX_PSNR_LOSS_DB and loss_lpips <= MAX_LPIPS_LOSS and levels <= 1}


def _onnx_nodes(path: Path):
    import onnx  # noqa: PLC0415

    return onnx.load(str(path)).graph.node


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default=None, help="default: the bundled model")
    p.add_argument("--data", default="data/photos", help="the photo set (`make data`)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: every core)")
    p.add_argument("--crop", type=int, default=DEFAULT_CROP, help="square crop side (the model card's: 256)")
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="photos' short side before cropping")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    r = probe(resolve_checkpoint(args.checkpoint), args.data, args.threads, args.crop, args.max_side)
    rows = [[name, f"{r['ms_per_pass'][name]:.0f}", f"{r['quality'][name]['psnr']:.2f}",
             f"{r['quality'][name]['lpips']:.4f}"] for name in ("fp32", "int8")]
    print(format_table(["denoiser", "ms / pass (median)", "PSNR dB", "LPIPS"], rows))
    print(f"int8: {r['ms_per_pass']['fp32'] / r['ms_per_pass']['int8']:.2f}x per pass, "
          f"{r['psnr_loss_db']:+.2f} dB PSNR lost, {r['lpips_loss']:+.4f} LPIPS, max |int8 - fp32| "
          f"{r['max_level_diff']} levels over {r['crops']} crops: {'within' if r['within_bar'] else 'outside'} "
          f"the bar (<= {MAX_PSNR_LOSS_DB} dB, <= {MAX_LPIPS_LOSS} LPIPS, <= 1 level)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
