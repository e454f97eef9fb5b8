"""The cost model: what a request costs in pixels (admission) and in seconds (deadlines, jobs).

Pixels are those the networks process, not those of the image: a decode runs on the latents
padded to the decoder's multiple and, above one tile, on overlapping tiles (64 tiles of 288² for
a 2048² image, 1.27x its pixels); an encode runs on the image padded to ``f`` (a 65536 x 1 PNG is
65536 x 8) and tiled alike. Both come from :func:`dgae.pipeline.decode_grid` / ``encode_grid``.

Seconds are ``rate x work``: decode work is megapixel-passes (tiled megapixels x denoiser
evaluations: one per Euler step), encode work is tiled megapixels. The rate is per operation on
this engine's backend and device: measured once at start-up (:func:`calibrate`: one decode tile at
one step, one encode tile) and then learned online from every finished batch or job as an EWMA.
Runs smaller than ``MIN_LEARN_MEGAPIXELS`` do not teach it (their fixed overheads would inflate
the per-pixel rate and refuse large work that fits). Without a rate (no warm-up yet) nothing is
estimated and nothing is refused by time.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import torch

from dgae import pipeline
from dgae.config import IMAGE_CHANNELS, DGAEConfig
from dgae.request import DecodeRequest, EncodeRequest
from formats.images import FitInfo

log = logging.getLogger(__name__)

ENCODE, DECODE = "encode", "decode"
UNITS = {DECODE: "megapixel_step", ENCODE: "megapixel"}
PIXELS_PER_MEGAPIXEL = 1_000_000
EWMA_WEIGHT = 0.2  # of the newest observation
MIN_LEARN_MEGAPIXELS = 0.05  # per pass: smaller runs are dominated by fixed overheads
CALIBRATION_STEPS = 1
CALIBRATION_SEED = 0
CALIBRATION_RUNS = 2  # the fastest counts: a runtime's first run of a shape pays set-up (ONNX Runtime allocations)


def padded_image_size(config: DGAEConfig, height: int, width: int) -> tuple[int, int]:
    """An image's size once padded to the encoder's multiple ``f`` (encode's ``fit=pad``)."""
    f = config.downsample_factor
    return -(-height // f) * f, -(-width // f) * f


def encode_pixels(config: DGAEConfig, height: int, width: int, tile: str = "auto") -> int:
    """Pixels the encoder processes for one ``height`` x ``width`` image: padded to ``f``, tiles
    counted with their overlaps."""
    h, w = padded_image_size(config, height, width)
    tiles = pipeline.encode_tiles(config, h, w, tile)
    if tiles is None:
        return h * w
    count, th, tw = tiles
    return count * th * tw * config.downsample_factor ** 2


def decode_pixels(config: DGAEConfig, latent_h: int, latent_w: int, tile: str = "auto") -> int:
    """Pixels the denoiser processes per evaluation for one latent of ``latent_h`` x ``latent_w``:
    the buffer padded to the decoder's multiple, tiles counted with their overlaps."""
    h, w = pipeline.decode_buffer_size(config, latent_h, latent_w)
    tiles = pipeline.decode_tiles(config, h, w, tile)
    if tiles is None:
        return h * w
    count, th, tw = tiles
    return count * th * tw


def decode_charge(config: DGAEConfig, req: DecodeRequest, infos: list[FitInfo | None] | None = None) -> int:
    """What admission charges a checked decode on every protocol: per item the pixels the denoiser
    processes (padded and tiled), or the item's recorded original size when that is larger (a
    ``resize`` fit is undone at full size)."""
    processed = decode_pixels(config, *req.latents.shape[-2:], req.tile)
    return sum(max(processed, info.orig_height * info.orig_width if info else 0) for info in infos or [None] * req.n)


def encode_charge(config: DGAEConfig, req: EncodeRequest) -> int:
    """What admission charges a checked encode of decoded images (the native routes charge the same
    from the image headers, before decoding): per image its pixels padded and tiled."""
    return req.n * encode_pixels(config, *req.images.shape[-2:], req.tile)


@dataclass(frozen=True)
class Estimate:
    operation: str
    work: float  # megapixel-steps (decode) or megapixels (encode)
    seconds: float | None  # None: no rate yet
    rate: float | None

    def describe(self) -> str:
        if self.seconds is None:
            return f"{self.work:.2f} {UNITS[self.operation]}s (no measured rate yet)"
        return (f"{self.seconds:.1f} s ({self.work:.2f} {UNITS[self.operation]}s at {self.rate:.3g} s per "
                f"{UNITS[self.operation].replace('_', '-')})")


class CostModel:
    """Seconds per unit of work per operation, for one backend on one device. Thread-safe."""

    def __init__(self, config: DGAEConfig, backend: str = "", device: str = "", metrics=None):
        self.config, self.backend, self.device, self.metrics = config, backend, device, metrics
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()

    def bind(self, backend: str, device: str) -> None:
        """Name the runtime the rates belong to (known once the backend is loaded)."""
        self.backend, self.device = backend, device

    # --- work ---------------------------------------------------------------------------------
    def decode_work(self, req: DecodeRequest) -> float:
        pixels = decode_pixels(self.config, *req.latents.shape[-2:], req.tile)
        return req.n * pixels * req.plan.evaluations / PIXELS_PER_MEGAPIXEL

    def encode_work(self, req: EncodeRequest) -> float:
        return req.n * encode_pixels(self.config, *req.images.shape[-2:], req.tile) / PIXELS_PER_MEGAPIXEL

    def work(self, operation: str, req: DecodeRequest | EncodeRequest) -> float:
        return self.decode_work(req) if operation == DECODE else self.encode_work(req)

    # --- rates --------------------------------------------------------------------------------
    def rate(self, operation: str) -> float | None:
        return self._rates.get(operation)

    def estimate(self, operation: str, req: DecodeRequest | EncodeRequest) -> Estimate:
        work, rate = self.work(operation, req), self.rate(operation)
        return Estimate(operation, work, None if rate is None else rate * work, rate)

    def observe(self, operation: str, work: float, seconds: float, passes: int = 1, *,
                calibration: bool = False) -> None:
        """Learn from a finished run of ``work`` units in ``seconds`` (``passes`` network calls)."""
        if work <= 0 or seconds <= 0:
            return
        per_pass = work / max(1, passes)
        if not calibration and per_pass < MIN_LEARN_MEGAPIXELS:
            return
        with self._lock:
            old = self._rates.get(operation)
            new = seconds / work
            rate = new if old is None or calibration else (1 - EWMA_WEIGHT) * old + EWMA_WEIGHT * new
            self._rates[operation] = rate
        if self.metrics is not None:
            self.metrics.cost_rate.labels(operation, UNITS[operation], self.backend, self.device).set(rate)

    def as_dict(self) -> dict:
        """For ``/v1/model``: each operation's rate (null until measured), its unit and how it is learned."""
        return {"backend": self.backend, "device": self.device, "ewma_weight": EWMA_WEIGHT,
                "seconds_per": {op: {"unit": UNITS[op], "seconds": self._rates.get(op)} for op in (DECODE, ENCODE)}}

    # --- start-up measurement ----------------------------------------------------------------
    def calibrate(self, backend) -> None:
        """Time one decode tile at one step and one encode tile on ``backend`` (in its worker thread),
        each the fastest of CALIBRATION_RUNS runs."""
        cfg, f = self.config, self.config.downsample_factor
        side = cfg.tiling.decode_tile
        latents = torch.zeros(1, cfg.latent_channels, side // f, side // f)
        req = DecodeRequest.resolve(cfg, latents, CALIBRATION_STEPS, CALIBRATION_SEED)
        self.observe(DECODE, self.decode_work(req), _fastest(lambda: backend.run_decode(req)), calibration=True)
        side = cfg.tiling.encode_tile
        ereq = EncodeRequest.resolve(cfg, torch.zeros(1, IMAGE_CHANNELS, side, side))
        self.observe(ENCODE, self.encode_work(ereq), _fastest(lambda: backend.run_encode(ereq)), calibration=True)
        log.info("cost model: decode %.3g s per megapixel-step, encode %.3g s per megapixel (%s on %s)",
                 self._rates[DECODE], self._rates[ENCODE], self.backend, self.device)


def _fastest(run) -> float:
    times = []
    for _ in range(CALIBRATION_RUNS):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)
