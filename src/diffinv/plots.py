"""Figures: loss curves and per-case reconstruction panels (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# backend, dpi, font sizes and layout: set once in diffinv.plotstyle (plt is re-exported from here)
from diffinv.plotstyle import ERROR_CMAP, FIELD_CMAP, PANEL_TITLE_SIZE, plt


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
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(steps, loss, lw=0.6, alpha=0.4, label="batch loss")
    ax.plot(steps, centred_smooth(loss), lw=1.5, label="smoothed (centred, ±5 logged steps)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("denoising loss")
    ax.legend()
    ax.grid(True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_case(
    panels: dict[str, np.ndarray], std: np.ndarray, title: str, path: Path, vmax: float | None = None
) -> Path:
    """Magnitude panels (truth, zero-filled, ..., mean), |error| and posterior std, in two
    rows when there are more than four panels (readable at a report's ~800 px width)."""
    names = list(panels)
    vmax = vmax if vmax is not None else float(np.abs(panels[names[0]]).max())
    truth = np.abs(panels[names[0]])
    mean = np.abs(panels[names[-1]])
    extra = [("|mean − truth|", np.abs(mean - truth)), ("posterior std", std)]
    n_panels = len(names) + 2
    rows = 2 if n_panels > 4 else 1
    cols = -(-n_panels // rows)
    fig, grid = plt.subplots(rows, cols, figsize=(2.6 * cols + 1.4, 2.7 * rows + 0.3), squeeze=False)
    for ax in grid.flat[n_panels:]:
        ax.set_visible(False)
    axes = list(grid.flat[:n_panels])
    for ax, name in zip(axes, names):
        gray = ax.imshow(np.abs(panels[name]), cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=PANEL_TITLE_SIZE)
    err_max = float(max(extra[0][1].max(), extra[1][1].max(), 1e-12))
    for ax, (name, img) in zip(axes[len(names) :], extra):
        heat = ax.imshow(img, cmap=ERROR_CMAP, vmin=0, vmax=err_max)
        ax.set_title(name, fontsize=PANEL_TITLE_SIZE)
    # one colourbar per group, spanning its panels: error and std on one scale
    # (in two rows the magnitude bar spans the first row only, the error/std bar the second)
    fig.colorbar(
        gray, ax=list(axes[: min(len(names), cols)]), fraction=0.02, pad=0.01, label="magnitude (a.u.)"
    )
    fig.colorbar(heat, ax=list(axes[len(names) :]), fraction=0.04, pad=0.01, label="a.u.")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
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
    # two rows, so the figure stays readable at the report's width: acquisition panels on top,
    # images below
    fig = plt.figure(figsize=(2.0 * n_img + 1.2, 5.4))
    grid = fig.add_gridspec(2, n_img, height_ratios=[1.1, 1])
    half = max(1, n_img // 2)
    top = [fig.add_subplot(grid[0, :half]), fig.add_subplot(grid[0, half:])]
    axes = top + [fig.add_subplot(grid[1, k]) for k in range(n_img)]
    ax = axes[0]
    shown = np.where(np.isfinite(entropy), entropy, np.nan)
    heat = ax.imshow(shown, aspect="auto", cmap=FIELD_CMAP, interpolation="nearest")
    valid = order >= 0
    ax.scatter(order[valid], np.arange(len(order))[valid], marker="x", c="red", s=12, label="acquired")
    ax.set_yticks(range(len(order)))
    ax.set_xlabel("k-space column")
    ax.set_ylabel("acquisition")
    ax.set_title("line entropy (x: acquired)", fontsize=PANEL_TITLE_SIZE)
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
    ax.set_yticks(range(len(masks)), list(masks))
    ax.set_xlabel("k-space column")
    ax.set_title("final masks (black: acquired)", fontsize=PANEL_TITLE_SIZE)
    vmax = float(np.abs(next(iter(images.values()))).max())
    for ax, (name, img) in zip(axes[2:], images.items()):
        gray = ax.imshow(np.abs(img), cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=PANEL_TITLE_SIZE)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(gray, ax=list(axes[2:-1]), fraction=0.02, pad=0.01, label="magnitude (a.u.)")
    im = axes[-1].imshow(std, cmap=ERROR_CMAP, vmin=0)
    axes[-1].set_title("ADS posterior std", fontsize=PANEL_TITLE_SIZE)
    axes[-1].set_xticks([])
    axes[-1].set_yticks([])
    fig.colorbar(im, ax=axes[-1], fraction=0.046, label="a.u.")
    fig.suptitle(title)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_calibration(table, samples: np.ndarray, truth: np.ndarray, record, title: str, path: Path) -> Path:
    """Calibration diagnostics of evaluation cases, raw against conformally calibrated:
    coverage curve (nominal against empirical, identity line), rank (PIT) histogram, and the
    RMS error of the sample mean against the predicted std in std-quantile bins (identity
    line; calibrated std = the raw std times the interval's calibration factor).

    ``table`` is :func:`diffinv.calibration.calibrate_stores`'s; ``samples`` (case, sample,
    ...) and ``truth`` (case, ...) real (complex images as channels); ``record`` the
    calibration at the primary level.
    """
    from diffinv.calibration import central_interval
    from diffinv.uncertainty import error_vs_std, rank_histogram

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5), dpi=110, layout="constrained")
    ax = axes[0]
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="identity")
    ax.plot(table["level"], table["coverage_raw"], "o-", label="raw samples")
    ax.plot(table["level"], table["coverage_calibrated"], "s-", label="calibrated (λ per level)")
    ax.set_xlabel("nominal level")
    ax.set_ylabel("empirical coverage (evaluation cases)")
    ax.set_title("coverage curve", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    counts = rank_histogram(samples, truth, axis=1)
    ax = axes[1]
    ax.bar(np.arange(counts.size), counts / counts.sum(), width=0.9)
    ax.axhline(1 / counts.size, color="k", ls="--", lw=0.8, label="calibrated (flat)")
    ax.set_xlabel(f"rank of the truth among {counts.size - 1} samples")
    ax.set_ylabel("fraction of pixels")
    ax.set_title("rank (PIT) histogram, raw samples", fontsize=9)
    ax.legend(fontsize=7)

    mean, std = samples.mean(1), samples.std(1, ddof=1)
    lo, hi = central_interval(samples, record.level)
    raw_half = np.maximum((hi - lo) / 2, 1e-30)
    clo, chi = record.bounds(samples)
    factor = float(np.median((chi - clo) / 2 / raw_half))
    ax = axes[2]
    pred, rmse = error_vs_std(mean, std, truth, bins=12)
    ax.plot(pred, rmse, "o-", label="raw std")
    ax.plot(pred * factor, rmse, "s-", label=f"calibrated std (× {factor:.2f})")
    lim = float(max(pred.max() * max(factor, 1), rmse.max(), 1e-12))
    ax.plot([0, lim], [0, lim], "k--", lw=0.8, label="identity")
    ax.set_xlabel("predicted std (bin mean)")
    ax.set_ylabel("RMS error of the sample mean")
    ax.set_title("error against predicted std", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{title}  (λ={record.lam:.3g} at {100 * record.level:.0f} %)", fontsize=9)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
