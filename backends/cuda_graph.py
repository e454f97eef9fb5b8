"""CUDA-graph capture of a whole N-step decode (static shapes): one replay per decode instead of
N x (U-Net launches), removing the launch gaps that dominate small-batch GPU decode."""
from __future__ import annotations

import torch

from dgae.errors import BackendError
from dgae.sampler import Denoiser, SamplePlan, run_sampler

MAX_GRAPHS = 16  # captured (shape, plan) variants kept; the oldest is dropped beyond this


class GraphedSampler:
    def __init__(self, denoise: Denoiser, device: torch.device):
        if device.type != "cuda":
            raise BackendError(f"CUDA graphs need a CUDA device, got {device}")
        self.denoise, self.device = denoise, device
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def _capture(self, buf: torch.Tensor, plan: SamplePlan):
        static = buf.clone()
        t_table = torch.tensor(plan.ts, dtype=torch.float32, device=buf.device)
        side = torch.cuda.Stream(device=buf.device)
        side.wait_stream(torch.cuda.current_stream(buf.device))
        with torch.cuda.stream(side):  # warm-up (autotune, lazy init) must happen before capture
            run_sampler(self.denoise, static.clone(), plan, t_table)
        torch.cuda.current_stream(buf.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run_sampler(self.denoise, static, plan, t_table)
        return graph, static, out

    @torch.no_grad()
    def __call__(self, buf: torch.Tensor, plan: SamplePlan) -> torch.Tensor:
        """Same result as ``run_sampler(denoise, buf, plan)``; returns a fresh tensor [B, 3, H, W]."""
        key = (tuple(buf.shape), buf.dtype, plan)
        if key not in self._graphs:
            if len(self._graphs) >= MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = self._capture(buf, plan)
        graph, static, out = self._graphs[key]
        static.copy_(buf)
        graph.replay()
        return out.clone()
