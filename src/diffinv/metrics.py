"""Image-quality metrics (fastMRI's definitions) on magnitude images."""

from __future__ import annotations

import numpy as np
from fastmri import evaluate


def image_metrics(truth: np.ndarray, estimate: np.ndarray) -> dict[str, float]:
    """PSNR, SSIM and NMSE of one magnitude image against the truth (fastmri.evaluate).

    ``maxval`` is the truth's maximum, as in the fastMRI leaderboard.
    """
    gt = np.abs(truth).astype(np.float64)[None]
    pred = np.abs(estimate).astype(np.float64)[None]
    maxval = float(gt.max())
    return {
        "psnr": float(evaluate.psnr(gt, pred, maxval=maxval)),
        "ssim": float(np.asarray(evaluate.ssim(gt, pred, maxval=maxval)).item()),
        "nmse": float(evaluate.nmse(gt, pred)),
    }
