"""Evaluation of reconstructions (PSNR/SSIM/LPIPS/KID vs steps and the thumbnail baseline), its report
and the model card."""
