"""diffusers' ``generator`` argument -> the project's per-sample seeds.

diffusers hands a VAE either nothing, one ``torch.Generator`` for the whole batch, or a list with
one generator per item. DGAE draws item i's noise from its own seed (:mod:`dgae.sampler`), so an
item decodes the same alone or in any batch, on any runtime. The mapping, written once here:

- ``seeds`` given: used as is (one int s means s, s+1, ...; a list means one per item), exactly
  as the service's ``seed`` parameter; the generator is then ignored;
- one generator: n seeds drawn from it in order, ``torch.randint(0, 2**63 - 1, (n,))``;
- a list of n generators: item i's seed is one such draw from generator i;
- neither: n seeds drawn from torch's global generator, as diffusers' ``randn_tensor`` draws
  noise when given no generator (``torch.manual_seed(s)`` before a pipeline call makes it
  repeatable, also for pipelines such as DiT that do not pass their generator to the VAE).

A seeded generator therefore gives the same images on every call that starts from the same
generator state, and advances the generator, as drawing noise from it would.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from dgae.errors import InputError
from dgae.sampler import SEED_BITS, resolve_seeds

SEED_HIGH = 2 ** SEED_BITS - 1  # torch.randint's upper bound (exclusive) that still fits an int64

Generators = torch.Generator | Sequence[torch.Generator] | None
Seeds = int | Sequence[int] | None


def draw_seed(generator: torch.Generator | None, n: int = 1) -> list[int]:
    """n seeds drawn from one generator (on its device), or from torch's global one when None."""
    if generator is None:
        return [int(s) for s in torch.randint(0, SEED_HIGH, (n,))]
    return [int(s) for s in torch.randint(0, SEED_HIGH, (n,), generator=generator, device=generator.device)]


def seeds_for(n: int, generator: Generators = None, seeds: Seeds = None) -> list[int]:
    """The per-sample seeds of a batch of n items (see the module docstring for the mapping)."""
    if seeds is not None:
        return resolve_seeds(seeds, n)
    if generator is None or isinstance(generator, torch.Generator):
        return draw_seed(generator, n)
    generators = list(generator)
    if len(generators) != n:
        raise InputError(f"got {len(generators)} generators for {n} items")
    return [draw_seed(g)[0] for g in generators]
