"""Custom kernels for DGAE's hot path, each beside its PyTorch reference.

Public API: :func:`flash_attention`, :func:`group_norm_silu`, :func:`euler_step`.
``DGAE_KERNELS=triton|reference|auto`` selects the implementation (see ``_dispatch``).
"""
from ._dispatch import kernel_mode, record_gpu_launches, use_kernels, use_triton
from .attention import flash_attention, flash_attention_reference, sdpa_attention
from .group_norm import group_norm_silu, group_norm_silu_reference
from .sampler_step import euler_step, euler_step_reference

__all__ = [
    "flash_attention", "flash_attention_reference", "sdpa_attention",
    "group_norm_silu", "group_norm_silu_reference",
    "euler_step", "euler_step_reference",
    "kernel_mode", "record_gpu_launches", "use_kernels", "use_triton",
]
