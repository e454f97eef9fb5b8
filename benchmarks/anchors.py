"""`dgae bench anchors`: what a diffusion decoder costs next to the one-pass VAE decoders users
would pick instead, on the same machine, resolution, batch and precision.

Anchors (random init: weights do not change speed), built with diffusers:
- ``sd-vae``: ``AutoencoderKL`` with the SD-VAE architecture (block_out_channels 128/256/512/512,
  2 layers per block, 4 latent channels, f=8); decode = post_quant_conv + decoder.
- ``taesd``: ``AutoencoderTiny`` with its default (TAESD) configuration, f=8, 4 latent channels.
DGAE rows: the checkpoint decoded by the backend a user gets by default (``backend=auto``: on CPU
ONNX Runtime with the cached export, see backends.factory) at each step count (Euler: one U-Net
pass per step), the model's default step count marked; ``--backend torch`` for the eager model.
Every row also carries its counted FLOPs per image (meta device, no compute). All rows are timed
in the same rounds, one call of each per round in a rotating order, so a slow minute on a shared
machine lands on every row alike; the summary gives the default row's speed-up over each anchor
as the median of the per-round ratios, with their range (each row keeps its ``round_ms``).

``--http`` adds what a client of the service gets: ``dgae serve`` started with this checkpoint and
nothing else set (a :class:`~benchmarks.service_process.ServiceProcess`), timed ``POST /decode``
calls of the same latents at the service's defaults (steps, output), and that row's speed-up over
the anchors measured in this process, in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from typing import Callable, Iterator

import torch

from dgae.errors import InputError

from .flops import decoder_pass_flops, denoiser_calls
from .inputs import image_batch
from .report import MS_PER_S, fmt, format_table, latency_summary, paired_ratio, synchronizer, time_interleaved

log = logging.getLogger(__name__)

SD_VAE_CONFIG = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
                 "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
                 "norm_num_groups": 32, "sample_size": 512}
ANCHOR_FACTOR = 8                  # both anchors decode f=8, c=4 latents
ANCHOR_CHANNELS = 4
ANCHOR_SEED = 0
STEPS = (1, 2, 4, 8)
QUICK = {"size": 128, "batch": 2, "repeats": 2}
FULL = {"size": 256, "batch": 8, "repeats": 5}
WARMUP = 1
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
GIGA = 1e9
HTTP_LABEL = "dgae POST /decode"
HTTP_TIMEOUT_S = 600.0
PREFIX = "speedup_vs_"
TIMING = "interleaved: one call of every row per round; speed-ups are medians of per-round ratios"


def build_anchors() -> dict[str, torch.nn.Module]:
    """name -> module whose forward(z) is the anchor's full decode. Raises ImportError without diffusers."""
    from diffusers import AutoencoderKL, AutoencoderTiny  # noqa: PLC0415

    class Decode(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(z).sample

    torch.manual_seed(ANCHOR_SEED)
    sd = AutoencoderKL(**SD_VAE_CONFIG)
    sd.encoder = None                   # decode-only: drop the encoder's memory
    tiny = AutoencoderTiny()
    tiny.encoder = None
    return {"sd-vae": Decode(sd), "taesd": Decode(tiny)}


def count_flops(module: torch.nn.Module, z: torch.Tensor) -> float | None:
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            module(z)
        return float(counter.get_total_flops())
    except RuntimeError as exc:
        log.warning("could not count FLOPs: %s", exc)
        return None


@torch.no_grad()  # scoped: in-process callers (tests, notebooks) keep autograd
def run(checkpoint, device: str, size: int, batch: int, steps: tuple[int, ...], repeats: int,
        precision: str, clock: str = "wall", backend_kind: str = "auto", http: bool = False) -> dict:
    """Every row timed in the same ``repeats`` rounds (:func:`~benchmarks.report.time_interleaved`),
    so each speed-up is the median of the ratios of calls made in the same round."""
    from backends.factory import create_backend  # noqa: PLC0415

    if http and clock != "wall":
        raise InputError("--http times another process: use the wall clock (--clock wall)")
    sync, dtype = synchronizer(device), PRECISIONS[precision]
    timed: dict[str, Callable[[], object]] = {}
    rows: dict[str, dict] = {}  # label -> the row's fields but its timings
    skipped: dict[str, str] = {}
    gen = torch.Generator().manual_seed(ANCHOR_SEED)
    z = torch.randn(batch, ANCHOR_CHANNELS, size // ANCHOR_FACTOR, size // ANCHOR_FACTOR, generator=gen)
    try:
        anchors = build_anchors()
    except ImportError as exc:
        anchors = {}
        skipped["sd-vae"] = skipped["taesd"] = f"diffusers not installed ({exc}); pip install diffusers"
    for name, module in anchors.items():
        module = module.to(device=device, dtype=dtype).eval()
        zd = z.to(device=device, dtype=dtype)
        timed[name] = lambda m=module, x=zd: m(x)
        rows[name] = {"kind": "anchor", "params": sum(p.numel() for p in module.parameters()),
                      "flops": count_flops(module, zd[:1]), "steps": None}
    backend = create_backend(backend_kind, checkpoint, device=device, precision=precision)
    info = backend.info()
    images, _ = image_batch(batch, size)
    latents = backend.encode(images)
    config = backend.config
    default_steps = config.sampler.default_steps
    pass_flops = decoder_pass_flops(config, size, size)
    dec_params = decoder_params(config)
    for k in sorted({*steps, default_steps}):
        label = f"dgae {k} step{'s' if k > 1 else ''}"
        timed[label] = lambda k=k: backend.decode(latents, steps=k, seeds=0)
        rows[label] = {"kind": "dgae", "params": dec_params, "flops": pass_flops * denoiser_calls(config, k),
                       "steps": k, "extra": {"backend": info.name, "default": k == default_steps}}
    with contextlib.ExitStack() as stack:
        if http:
            timed[HTTP_LABEL] = stack.enter_context(service_decoder(checkpoint, device, latents))
            rows[HTTP_LABEL] = {"kind": "service", "params": dec_params,
                                "flops": pass_flops * denoiser_calls(config, default_steps), "steps": default_steps,
                                "extra": {"backend": "service defaults", "default": False}}
        seconds = time_interleaved(timed, WARMUP, repeats, sync, clock=clock)
    backend.close()
    rows_out = [{**make_row(label, r["kind"], batch, seconds[label], r["params"], r["flops"], r["steps"]),
                 **r.get("extra", {})} for label, r in rows.items()]
    sd_ms = next((r["ms_per_image"] for r in rows_out if r["label"] == "sd-vae"), None)
    for r in rows_out:
        r["cost_vs_sd_vae"] = r["ms_per_image"] / sd_ms if sd_ms else None
    default = next(r for r in rows_out if r["kind"] == "dgae" and r["steps"] == default_steps)
    summary = {"backend": info.name, "backend_reason": getattr(backend, "auto_reason", backend_kind),
               "default_steps": default_steps, "default_ms_per_image": default["ms_per_image"], "rounds": repeats}
    for name in anchors:
        paired = paired_ratio(seconds[name], seconds[default["label"]])
        summary[PREFIX + name] = paired["median"]
        summary[f"speedup_range_vs_{name}"] = [paired["min"], paired["max"]]
        if http:
            summary[f"http_{PREFIX}{name}"] = paired_ratio(seconds[name], seconds[HTTP_LABEL])["median"]
    return {"benchmark": "anchors", "device": device, "precision": precision, "clock": clock, "size": size,
            "batch": batch, "repeats": repeats, "timing": TIMING, "preset": config.name,
            "sd_vae_config": SD_VAE_CONFIG, "rows": rows_out, "skipped": skipped, "summary": summary}


@contextlib.contextmanager
def service_decoder(checkpoint, device: str, latents: torch.Tensor) -> Iterator[Callable[[], object]]:
    """A started ``dgae serve`` (this checkpoint, nothing else set) and a call that sends it one
    ``POST /decode`` of ``latents`` at its defaults; the service is stopped on exit. Its work
    happens in its process, so only the wall clock measures it."""
    from dgae_client import Client  # noqa: PLC0415

    from .service_process import ServiceProcess  # noqa: PLC0415

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    body = latents.numpy()
    with ServiceProcess({"DGAE_CHECKPOINT": str(checkpoint), "DGAE_DEVICE": device}) as url, \
            Client(url, timeout_s=HTTP_TIMEOUT_S, retries=0) as client:
        yield lambda: client.decode(body)


def decoder_params(config) -> int:
    """Parameter count of the decoder (meta device: nothing allocated)."""
    from dgae.decoder import Decoder  # noqa: PLC0415

    with torch.device("meta"):
        return sum(p.numel() for p in Decoder(config).parameters())


def make_row(label: str, kind: str, batch: int, seconds: list[float], params: int, flops_per_image: float | None,
             steps: int | None) -> dict:
    lat = latency_summary(seconds)
    return {"label": label, "kind": kind, "steps": steps, "params": params, "latency": lat,
            "round_ms": [s * MS_PER_S for s in seconds],
            "ms_per_image": lat["p50_ms"] / batch, "images_per_s": batch * MS_PER_S / lat["p50_ms"],
            "gflops_per_image": None if flops_per_image is None else flops_per_image / GIGA}


def run_from_args(args: argparse.Namespace, checkpoint, device: str) -> dict:
    preset = QUICK if args.quick else FULL
    size = args.size or preset["size"]
    batch = args.batch or preset["batch"]
    repeats = args.repeats or preset["repeats"]
    if size % ANCHOR_FACTOR or size <= 0:
        raise InputError(f"--size must be a positive multiple of {ANCHOR_FACTOR}, got {size}")
    if batch <= 0 or repeats <= 0:
        raise InputError("--batch and --repeats must be positive")
    precision = "bf16" if device.startswith("cuda") else "fp32"
    return run(checkpoint, device, size, batch, tuple(args.steps or STEPS), repeats, precision, args.clock,
               args.backend, args.http)


def results_table(report: dict) -> str:
    headers = ["decoder", "params", "GFLOP/img", "ms/img", "img/s", "x sd-vae cost"]
    rows = [[r["label"], f"{r['params'] / 1e6:.1f}M", fmt(r["gflops_per_image"], ".1f"), fmt(r["ms_per_image"], ".1f"),
             fmt(r["images_per_s"], ".2f"), fmt(r["cost_vs_sd_vae"], ".2f")] for r in report["rows"]]
    title = (f"decode {report['size']}px, batch {report['batch']}, {report['precision']}, "
             f"DGAE preset {report['preset']}, {report.get('clock', 'wall')} clock")
    skipped = [f"skipped {k}: {v}" for k, v in report["skipped"].items()]
    s = report.get("summary", {})
    speedups, n = [], s.get("default_steps")
    steps = f"{n} step{'' if n == 1 else 's'}"
    for name in (k[len(PREFIX):] for k in s if k.startswith(PREFIX)):
        low, high = s[f"speedup_range_vs_{name}"]
        speedups.append(f"default ({s['backend']}, {steps}): {s[PREFIX + name]:.1f}x faster than "
                        f"{name} (median of {s['rounds']} rounds; range {fmt(low, '.1f')}-{fmt(high, '.1f')})")
        if f"http_{PREFIX}{name}" in s:
            speedups.append(f"{HTTP_LABEL} (service defaults, {steps}): "
                            f"{s[f'http_{PREFIX}{name}']:.1f}x faster than {name}")
    return "\n".join([title, format_table(headers, rows), *skipped, *speedups])
