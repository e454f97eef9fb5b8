"""Image-quality metrics: LPIPS (``training.metrics.lpips``), PSNR/SSIM (``training.metrics.image_quality``).

Kept import-free so ``import training.metrics`` costs nothing; import the submodules directly.
"""
