"""Image-quality metrics: LPIPS (``dgae.metrics.lpips``), PSNR/SSIM (``dgae.metrics.image_quality``).

Kept import-free so ``import dgae.metrics`` costs nothing; import the submodules directly.
"""
