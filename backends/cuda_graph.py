"""CUDA-graph capture of a whole N-step decode (static shapes): one replay per decode instead of
N x (U-Net launches), removing the launch gaps that dominate small-batch GPU decode.

Memory is bounded: at most ``max_graphs`` captured (shape, dtype, plan) variants are kept, least
recently used evicted first, and every capture goes into one shared memory pool
(``torch.cuda.graph_pool_handle()``), so a new shape reuses the activations' memory of the
captures before it instead of adding a private pool per shape; an evicted graph is reset, which
returns its blocks to that pool. Sharing a pool is safe because replays never overlap (a lock
serialises them) and every replay's result is copied out before the next one.

Only untiled decodes reach this path (:meth:`backends.base.Backend.fast_sample`); tiled decodes
call the denoiser per tile.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

import torch

from dgae.errors import BackendError
from dgae.sampler import Denoiser, SamplePlan, run_sampler

log = logging.getLogger(__name__)

MAX_GRAPHS = 16  # captured (shape, dtype, plan) variants kept; the least recently used is evicted beyond this

V = TypeVar("V")


class BoundedCache(Generic[V]):
    """At most ``capacity`` entries, least recently used evicted first; ``release(value)`` is
    called on every entry that leaves (eviction or :meth:`clear`)."""

    def __init__(self, capacity: int, release: Callable[[V], None]):
        if capacity < 1:
            raise BackendError(f"a graph cache needs room for at least one graph, got {capacity}")
        self.capacity, self._release = capacity, release
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def keys(self) -> list[Hashable]:
        """Oldest (next to evict) first."""
        return list(self._items)

    def get(self, key: Hashable, make: Callable[[], V]) -> V:
        """The entry for ``key``, made (after evicting down to capacity - 1) when missing."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        while len(self._items) >= self.capacity:
            old_key, old = self._items.popitem(last=False)
            log.info("CUDA graph cache full (%d): evicting %s", self.capacity, old_key)
            self._release(old)
        value = make()
        self._items[key] = value
        return value

    def clear(self) -> None:
        while self._items:
            self._release(self._items.popitem(last=False)[1])


class _Captured:
    """One captured decode: the graph, its static input buffer and its output (a view of it)."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", static: torch.Tensor, out: torch.Tensor):
        self.graph, self.static, self.out = graph, static, out

    def release(self) -> None:
        self.graph.reset()  # returns the graph's blocks to the shared pool
        self.graph = self.static = self.out = None


class GraphedSampler:
    def __init__(self, denoise: Denoiser, device: torch.device, max_graphs: int = MAX_GRAPHS):
        if device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device, got {device}")
        self.denoise, self.device = denoise, device
        self._pool = torch.cuda.graph_pool_handle()  # one pool shared by every capture
        self._graphs: BoundedCache[_Captured] = BoundedCache(max_graphs, _Captured.release)
        self._lock = threading.Lock()  # replays of graphs sharing a pool must never overlap

    def _capture(self, buf: torch.Tensor, plan: SamplePlan) -> _Captured:
        log.info("capturing a CUDA graph for %s %s, %d step(s) (%d kept at most)", tuple(buf.shape),
                 buf.dtype, plan.steps, self._graphs.capacity)
        static = buf.clone()
        t_table = torch.tensor(plan.ts, dtype=torch.float32, device=buf.device)
        side = torch.cuda.Stream(device=buf.device)
        side.wait_stream(torch.cuda.current_stream(buf.device))
        with torch.cuda.stream(side):  # warm-up (compile, lazy init) must happen before capture
            run_sampler(self.denoise, static.clone(), plan, t_table)
        torch.cuda.current_stream(buf.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another worker thread's CUDA calls (the service encodes concurrently) do not
        # invalidate this capture
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = run_sampler(self.denoise, static, plan, t_table)
        return _Captured(graph, static, out)

    @property
    def captured(self) -> int:
        return len(self._graphs)

    @torch.no_grad()
    def __call__(self, buf: torch.Tensor, plan: SamplePlan) -> torch.Tensor:
        """Same result as ``run_sampler(denoise, buf, plan)``; returns a fresh tensor [B, 3, H, W]."""
        key = (tuple(buf.shape), buf.dtype, plan)
        with self._lock:
            entry = self._graphs.get(key, lambda: self._capture(buf, plan))
            entry.static.copy_(buf)
            entry.graph.replay()
            return entry.out.clone()

    def close(self) -> None:
        """Drop every captured graph (their memory goes back to the pool, then to the allocator)."""
        with self._lock:
            self._graphs.clear()
        torch.cuda.empty_cache()
