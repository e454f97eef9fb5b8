"""Hypothesis strategies and settings for fuzzing the parsers of untrusted bytes (tests/test_fuzz_parsers.py).

Each parser is fed two kinds of input: arbitrary bytes/JSON, and a valid payload put through random
mutations (bit flips, truncation, insertion, overwrites, splices) so the fuzzer reaches past the
first header check. The bounded CI run uses ``DEFAULT_EXAMPLES`` per parser; a longer run sets
``DGAE_FUZZ_EXAMPLES`` (docs/fuzzing.md records one).
"""
from __future__ import annotations

import io
import json
import os

import numpy as np
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save as st_save

EXAMPLES_ENV = "DGAE_FUZZ_EXAMPLES"
DEFAULT_EXAMPLES = 150  # per parser in CI: the whole module stays well under a minute on 2 shared cores
MAX_MUTATIONS = 6
MAX_INSERT = 64
HUGE_DIGITS = 5000  # past Python's int-parsing limit (4300 digits)
INTERESTING_INTS = (0, 1, -1, 2 ** 31, 2 ** 63, 2 ** 64, 10 ** 400, -(2 ** 63))


def examples() -> int:
    return int(os.environ.get(EXAMPLES_ENV, DEFAULT_EXAMPLES))


def fuzz_settings():
    return settings(max_examples=examples(), deadline=None, database=None, derandomize=EXAMPLES_ENV not in os.environ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# --- mutation ------------------------------------------------------------------------------------------
@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """One of ``seeds`` after up to MAX_MUTATIONS random edits."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, MAX_MUTATIONS))):
        op = draw(st.sampled_from(("flip", "truncate", "insert", "overwrite", "delete", "splice")))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(max_size=MAX_INSERT))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, MAX_INSERT))]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data[pos:] = other[draw(st.integers(0, len(other))):]
    return bytes(data)


def bytes_or_mutated(seeds: list[bytes]):
    return st.one_of(st.binary(max_size=512), mutated(seeds))


# --- JSON ------------------------------------------------------------------------------------------------
def numbers():
    return st.one_of(st.integers(), st.sampled_from(INTERESTING_INTS), st.floats(allow_nan=True, allow_infinity=True),
                     st.booleans(), st.none())


def json_values(max_leaves: int = 20):
    scalars = st.one_of(numbers(), st.text(max_size=8))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                        max_leaves=max_leaves)


def nested_numbers(rank: int, side: int = 2):
    leaf = numbers()
    for _ in range(rank):
        leaf = st.lists(leaf, min_size=0, max_size=side + 1)
    return leaf


def dumps(doc) -> bytes:
    """JSON bytes; non-finite floats as the NaN/Infinity tokens Python's json reads back."""
    return json.dumps(doc).encode()


def huge_int_text() -> bytes:
    return b"9" * HUGE_DIGITS


# --- seeds: valid payloads -------------------------------------------------------------------------------
def npy_seed(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def safetensors_seed(meta: str | None) -> bytes:
    t = torch.zeros(1, 4, 2, 2)
    return st_save({"latents": t}, metadata=None if meta is None else {"dgae": meta})


def image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    out = []
    for fmt, mode in (("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "I;16"), ("JPEG", "RGB"), ("WEBP", "RGB"),
                      ("BMP", "RGB"),
                      ("GIF", "P"), ("TIFF", "RGB"), ("TIFF", "F"), ("PPM", "RGB")):
        img = Image.fromarray(rgb)
        img = img.convert("I;16") if mode == "I;16" else img.convert("F") if mode == "F" else img.convert(mode)
        buf = io.BytesIO()
        img.save(buf, fmt)
        out.append(buf.getvalue())
    return out
