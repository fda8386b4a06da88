"""Figure of a reconstructed volume: three orthogonal central slices of every reconstruction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import xarray as xr

from diffinv.plotstyle import ERROR_CMAP, PANEL_TITLE_SIZE, plt

VIEW_SLICES = (("axial", 0), ("coronal", 1), ("sagittal", 2))


def central(volume: np.ndarray, axis: int) -> np.ndarray:
    """The central slice of a (z, y, x) volume along ``axis``."""
    return np.take(volume, volume.shape[axis] // 2, axis=axis)


def plot_orthogonal_views(
    panels: dict[str, np.ndarray],
    std: np.ndarray,
    units: str,
    title: str,
    path: Path,
    quantity: str = "attenuation",
) -> Path:
    """Rows: axial, coronal, sagittal; columns: the volumes of ``panels`` (the first is the
    reference, the last the posterior mean), |mean − reference| and the posterior std.

    Image panels share one grey scale (the reference's range); error and std share one colour scale.
    ``quantity`` names the image values on the grey colour bar.
    """
    names = list(panels)
    reference, mean = panels[names[0]], panels[names[-1]]
    extra = {"|mean − reference|": np.abs(mean - reference), "posterior std": std}
    lo, hi = float(reference.min()), float(reference.max())
    err_max = float(max(max(float(np.quantile(v, 0.995)) for v in extra.values()), 1e-12))
    cols = len(names) + 2
    depth, ny, nx = reference.shape
    heights = [ny, depth, depth]
    fig, axes = plt.subplots(
        3,
        cols,
        figsize=(1.9 * cols + 1.4, 1.9 * sum(heights) / ny + 0.6),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for r, (view, axis) in enumerate(VIEW_SLICES):
        for c, name in enumerate(names):
            gray = axes[r, c].imshow(
                central(panels[name], axis), cmap="gray", vmin=lo, vmax=hi, aspect="auto"
            )
            if r == 0:
                axes[r, c].set_title(name, fontsize=PANEL_TITLE_SIZE)
        for c, (name, img) in enumerate(extra.items(), start=len(names)):
            heat = axes[r, c].imshow(central(img, axis), cmap=ERROR_CMAP, vmin=0, vmax=err_max, aspect="auto")
            if r == 0:
                axes[r, c].set_title(name, fontsize=PANEL_TITLE_SIZE)
        axes[r, 0].set_ylabel(view, fontsize=PANEL_TITLE_SIZE)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(
        gray, ax=list(axes[:, : len(names)].flat), fraction=0.02, pad=0.01, label=f"{quantity} ({units})"
    )
    fig.colorbar(heat, ax=list(axes[:, len(names) :].flat), fraction=0.04, pad=0.01, label=units)
    fig.suptitle(title)
    fig.savefig(path)
    plt.close(fig)
    return path


def volume_figures_of(
    store: Path,
    folder: Path,
    panels: Callable[[xr.Dataset], dict[str, np.ndarray]],
    title: Callable[[xr.Dataset, xr.Dataset], str],
    units: str | None = None,
    quantity: str = "attenuation",
) -> list[Path]:
    """``volume###.png`` per volume of a stage store (dims ``volume, [sample,] z, y, x`` with ``std``):
    :func:`plot_orthogonal_views` of ``panels(volume)``, titled ``title(store, volume)``; units from
    the mean's attribute unless given."""
    from diffinv.io.store import open_zarr

    ds = open_zarr(store)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(ds.sizes["volume"]):
        v = ds.isel(volume=i).load()
        unit = units if units is not None else str(v["mean"].attrs.get("units", ""))
        path = folder / f"volume{i:03d}.png"
        paths.append(plot_orthogonal_views(panels(v), v["std"].values, unit, title(ds, v), path, quantity))
    return paths
