"""Figures: loss curves and per-case reconstruction panels (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def centred_smooth(values: np.ndarray, half: int = 5) -> np.ndarray:
    """Centred moving average of ``log(values)`` over ±``half`` points, symmetric at the ends.

    Unlike a trailing EMA it does not lag a falling loss, and it reproduces an exponential
    decay exactly, so it stays among the raw points.
    """
    logs = np.log(np.maximum(values, 1e-30))
    n = len(logs)
    out = np.empty_like(logs)
    for i in range(n):
        k = min(half, i, n - 1 - i)
        out[i] = logs[i - k : i + k + 1].mean()
    return np.exp(out)


def plot_loss_curve(log: Sequence[tuple[int, float, float]], path: Path) -> Path:
    """Training loss of each logged batch and its centred smoothing against step, log-scaled."""
    steps, loss = (np.array(c) for c in list(zip(*log))[:2])
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="batch loss")
    ax.plot(steps, centred_smooth(loss), lw=1.5, label="smoothed (centred, ±5 logged steps)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_case(
    panels: dict[str, np.ndarray], std: np.ndarray, title: str, path: Path, vmax: float | None = None
) -> Path:
    """One row: magnitude panels (truth, zero-filled, ..., mean), |error| and posterior std."""
    names = list(panels)
    vmax = vmax if vmax is not None else float(np.abs(panels[names[0]]).max())
    truth = np.abs(panels[names[0]])
    mean = np.abs(panels[names[-1]])
    extra = [("|mean − truth|", np.abs(mean - truth)), ("posterior std", std)]
    fig, axes = plt.subplots(
        1, len(names) + 2, figsize=(2.3 * (len(names) + 2) + 1.2, 2.8), dpi=110, layout="constrained"
    )
    for ax, name in zip(axes, names):
        gray = ax.imshow(np.abs(panels[name]), cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=8)
    err_max = float(max(extra[0][1].max(), extra[1][1].max(), 1e-12))
    for ax, (name, img) in zip(axes[len(names) :], extra):
        heat = ax.imshow(img, cmap="magma", vmin=0, vmax=err_max)
        ax.set_title(name, fontsize=8)
    # one colourbar per group, spanning its panels: error and std on one scale
    fig.colorbar(gray, ax=list(axes[: len(names)]), fraction=0.02, pad=0.01, label="magnitude (a.u.)")
    fig.colorbar(heat, ax=list(axes[len(names) :]), fraction=0.04, pad=0.01, label="a.u.")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_ads_case(
    entropy: np.ndarray,
    order: np.ndarray,
    masks: dict[str, np.ndarray],
    images: dict[str, np.ndarray],
    std: np.ndarray,
    title: str,
    path: Path,
) -> Path:
    """ADS for one case: the mask growing (entropy per line at each acquisition, chosen line
    marked), the final masks of every strategy, and truth / ADS mean / ADS std / baselines."""
    n_img = len(images) + 1
    fig, axes = plt.subplots(
        1, 2 + n_img, figsize=(2.6 * (2 + n_img) + 1.5, 3.0), dpi=110, layout="constrained"
    )
    ax = axes[0]
    shown = np.where(np.isfinite(entropy), entropy, np.nan)
    heat = ax.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    valid = order >= 0
    ax.scatter(order[valid], np.arange(len(order))[valid], marker="x", c="red", s=12, label="acquired")
    ax.set_yticks(range(len(order)))
    ax.set_xlabel("k-space column")
    ax.set_ylabel("acquisition")
    ax.set_title("line entropy (x: acquired)", fontsize=8)
    fig.colorbar(heat, ax=ax, fraction=0.05, pad=0.02, label="entropy (nat)")
    ax = axes[1]
    ax.imshow(
        np.stack(list(masks.values())).astype(float),
        aspect="auto",
        cmap="gray_r",
        interpolation="nearest",
        vmin=0,
        vmax=1,
    )
    ax.set_yticks(range(len(masks)), list(masks), fontsize=7)
    ax.set_xlabel("k-space column")
    ax.set_title("final masks (black: acquired)", fontsize=8)
    vmax = float(np.abs(next(iter(images.values()))).max())
    for ax, (name, img) in zip(axes[2:], images.items()):
        gray = ax.imshow(np.abs(img), cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(gray, ax=list(axes[2:-1]), fraction=0.02, pad=0.01, label="magnitude (a.u.)")
    im = axes[-1].imshow(std, cmap="magma", vmin=0)
    axes[-1].set_title("ADS posterior std", fontsize=8)
    axes[-1].set_xticks([])
    axes[-1].set_yticks([])
    fig.colorbar(im, ax=axes[-1], fraction=0.046, label="a.u.")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path)
    plt.close(fig)
    return path
