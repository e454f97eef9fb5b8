"""Set-level distances between Inception feature sets: KID (primary) and FID (secondary).

KID (Binkowski et al. 2018, "Demystifying MMD GANs") is the unbiased estimate of the squared MMD
with the cubic polynomial kernel k(x, y) = (x . y / d + 1) ** 3, d = feature dimension:

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n)

It is unbiased at any sample size (so it can come out slightly negative when the sets match),
which is why it is the number to read with a few dozen crops. Like clean-fid / torch-fidelity,
sets larger than ``subset_size`` are scored as the mean (and std) over random subsets; smaller
sets are scored once on all samples (std reported as 0).

FID is the Frechet distance between Gaussians fitted to the two sets. With n samples the
covariances have rank <= n - 1 << 2048, so FID is strongly biased at small n: report it only as
a rough, "unreliable at this n" number. It is computed exactly through the low-rank form
tr sqrt(S1 S2) = ||A B^T||_* / sqrt((m - 1)(n - 1)) (A, B the centred feature matrices), which
avoids the 2048 x 2048 matrix square root.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dgae.errors import InputError

KERNEL_DEGREE = 3
KERNEL_COEF = 1.0
DEFAULT_SUBSET_SIZE = 1000  # clean-fid / torch-fidelity default
DEFAULT_SUBSETS = 100
MIN_SAMPLES = 2  # the unbiased estimate needs two samples per set


@dataclass(frozen=True)
class KIDResult:
    value: float  # mean MMD^2_u over subsets
    std: float  # std over subsets (0 when scored once on all samples)
    samples: tuple[int, int]  # (m, n)
    subset_size: int
    subsets: int

    def to_dict(self) -> dict:
        return {"kid": self.value, "kid_std": self.std, "kid_samples": list(self.samples),
                "kid_subset_size": self.subset_size, "kid_subsets": self.subsets}


def _check(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise InputError(f"expected feature matrices [m, d] and [n, d], got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(len(x), len(y)) < MIN_SAMPLES:
        raise InputError(f"KID/FID need at least {MIN_SAMPLES} samples per set, got {len(x)} and {len(y)}")
    return x.double(), y.double()


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[m, d], [n, d] -> [m, n] kernel matrix (x . y / d + 1) ** 3."""
    return (x @ y.T / x.shape[1] + KERNEL_COEF) ** KERNEL_DEGREE


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared MMD between feature sets x [m, d] and y [n, d] (one estimate)."""
    x, y = _check(x, y)
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))  # off-diagonal mean
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kid(x: torch.Tensor, y: torch.Tensor, subset_size: int = DEFAULT_SUBSET_SIZE,
        subsets: int = DEFAULT_SUBSETS, seed: int = 0) -> KIDResult:
    """KID between feature sets; see the module docstring for the subset policy."""
    x, y = _check(x, y)
    if subset_size < MIN_SAMPLES or subsets < 1:
        raise InputError(f"subset_size must be >= {MIN_SAMPLES} and subsets >= 1, got {subset_size}, {subsets}")
    if max(len(x), len(y)) <= subset_size:
        return KIDResult(mmd2_unbiased(x, y), 0.0, (len(x), len(y)), max(len(x), len(y)), 1)
    size = min(subset_size, len(x), len(y))
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor([mmd2_unbiased(x[torch.randperm(len(x), generator=gen)[:size]],
                                         y[torch.randperm(len(y), generator=gen)[:size]])
                           for _ in range(subsets)], dtype=torch.float64)
    return KIDResult(float(values.mean()), float(values.std()), (len(x), len(y)), size, subsets)


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """FID between feature sets x [m, d] and y [n, d] (exact, via the low-rank form)."""
    x, y = _check(x, y)
    m, n = len(x), len(y)
    a, b = x - x.mean(0), y - y.mean(0)  # centred [m, d], [n, d]
    mean_term = (x.mean(0) - y.mean(0)).pow(2).sum()
    trace_term = a.pow(2).sum() / (m - 1) + b.pow(2).sum() / (n - 1)  # tr S1 + tr S2
    cross = torch.linalg.matrix_norm(a @ b.T, ord="nuc") / ((m - 1) * (n - 1)) ** 0.5  # tr sqrt(S1 S2)
    return float((mean_term + trace_term - 2.0 * cross).clamp_min(0.0))
