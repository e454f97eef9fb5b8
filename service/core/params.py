"""Request parameters as every protocol receives them (query text, JSON values, gRPC parameters)
turned into the service's checked requests: the service's own limits first (items per request,
pixels per image), then the model's checks in :mod:`dgae.request`, the one boundary below which
nothing is checked again. Every adapter (native routes, Open Inference Protocol over HTTP and
gRPC, Remote VAE, jobs) calls these, so a parameter means the same thing and fails with the same
message on every protocol.
"""
from __future__ import annotations

import difflib
from typing import Iterable

import torch

from dgae.errors import InputError, TooLargeError
from dgae.request import DecodeRequest, EncodeRequest, Seeds
from dgae.sampler import SEED_BITS

from .engine import Engine
from .errors import ParameterError, UnknownParameter

MAX_SEED_DIGITS = len(str(2 ** SEED_BITS))  # longer digit strings are refused before int() parses them
MAX_ECHO_CHARS = 40  # of a bad value quoted in an error
PIXEL_RANGE = (-1.0, 1.0)  # float images on every protocol
SEED_HELP = f"an integer in [0, 2**{SEED_BITS}) or a comma-separated list of them (one per item)"


def ascii_digits(text: str) -> bool:
    """Only 0-9 (``str.isdigit`` also takes '²' and other digits ``int()`` refuses)."""
    return text.isascii() and text.isdigit()


def echo(value: object) -> str:
    """A user's value quoted in an error, cut to MAX_ECHO_CHARS."""
    text = repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS] + f"... ({len(text)} chars)"


def _int_text(text: str) -> int | None:
    """The integer of at most MAX_SEED_DIGITS ASCII digits ``text`` spells (spaces around), else None:
    checked before ``int()``, which refuses over 4300 digits with a bare ValueError."""
    text = text.strip()
    return int(text) if ascii_digits(text) and len(text) <= MAX_SEED_DIGITS else None


def _seed_int(part: str | int) -> int:
    value = part if type(part) is int else _int_text(str(part))
    if value is None or not 0 <= value < 2 ** SEED_BITS:
        raise ParameterError(f"seed must be {SEED_HELP}, got {echo(part)}")
    return value


def parse_seeds(value: str | int | Iterable[int] | None) -> Seeds:
    """None (random), one int ``s`` (item i uses s + i), or one seed per item: from ``"s"``,
    ``"s0,s1,..."``, an int or a list of ints."""
    if value is None:
        return None
    if type(value) is int:
        return _seed_int(value)
    if isinstance(value, str):
        parts = value.split(",")
        return _seed_int(parts[0]) if len(parts) == 1 else [_seed_int(p) for p in parts]
    if isinstance(value, (list, tuple)):
        return [_seed_int(v) for v in value]
    raise ParameterError(f"seed must be {SEED_HELP}, got {echo(value)}")


def parse_int(name: str, value: str | int | None, default: int) -> int:
    """An integer parameter from text or JSON (bools refused), ``default`` when absent."""
    if value is None:
        return default
    if type(value) is int:
        return value
    parsed = _int_text(value) if isinstance(value, str) else None
    if parsed is not None:
        return parsed
    raise ParameterError(f"{name} must be an integer, got {echo(value)}")


def unknown_parameters(given: Iterable[str], known: Iterable[str]) -> None:
    """400 naming every parameter not in ``known`` (and the close match: ``step`` -> ``steps``)."""
    known = sorted(known)
    unknown = [name for name in given if name not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{echo(name)}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UnknownParameter(f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
                         f"this operation takes {', '.join(known)}")


def check_items(engine: Engine, n: int, height: int, width: int, what: str) -> None:
    """The service's limits on one request: at most ``max_items`` items, ``max_pixels`` per item."""
    s = engine.settings
    if n > s.max_items:
        raise TooLargeError(f"{n} {what} exceed the limit of {s.max_items} per request")
    if height * width > s.max_pixels:
        raise TooLargeError(f"{what} of {width}x{height} = {height * width} pixels exceed the limit of "
                            f"{s.max_pixels} pixels per image")


def float_images(images: torch.Tensor, what: str = "images") -> torch.Tensor:
    """Float images sent as a tensor -> float32, refusing non-finite values or values outside
    ``PIXEL_RANGE`` (the one check every protocol that takes float pixels applies)."""
    lo, hi = PIXEL_RANGE
    images = images.float()
    if images.numel() and not (torch.isfinite(images).all() and images.min() >= lo and images.max() <= hi):
        raise InputError(f"float {what} must be finite and lie in [{lo:g}, {hi:g}]")
    return images


def encode_request(engine: Engine, images: torch.Tensor, mode: str = "mean", seed: Seeds | str = None,
                   tile: str = "auto") -> EncodeRequest:
    """Checked images [N, 3, H, W] in [-1, 1] -> the request every layer below trusts."""
    if images.dim() == 4:
        check_items(engine, len(images), *images.shape[-2:], "images")
    return EncodeRequest.resolve(engine.config, images, mode, parse_seeds(seed), tile)


def decode_request(engine: Engine, latents: torch.Tensor, steps: str | int | None = None,
                   seed: Seeds | str = None, tile: str = "auto") -> DecodeRequest:
    """Public latents [N, c, h, w] -> the request every layer below trusts (default steps: the
    service's)."""
    spec = engine.spec
    if latents.dim() == 4:
        f = spec.f
        check_items(engine, len(latents), latents.shape[-2] * f, latents.shape[-1] * f, "latents")
    steps = parse_int("steps", steps, spec.default_steps)
    return DecodeRequest.resolve(engine.config, latents, steps, parse_seeds(seed), tile, max_steps=spec.max_steps)
