"""Matplotlib defaults for every diffinv figure, chosen once.

Importing this module selects the non-interactive Agg backend (figures are written by
Snakemake jobs and the CLI, never shown) and sets :data:`STYLE` in ``matplotlib.rcParams``.
Figure modules import ``plt`` from here instead of setting the backend, dpi or font sizes
themselves::

    from diffinv.plotstyle import ERROR_CMAP, plt

Sizes are chosen for the Snakemake report, which shows a figure about 800 px wide: at
:data:`DPI` a 7.3-inch figure is 800 px, so text of 8-10 pt stays 12-15 px tall there.
Wider figures (rows of many panels) are scaled down by the report; keep them near that
width, or in two rows, rather than raising font sizes per call.

Colour maps: images (magnitudes, attenuation, sinograms) are grey (``image.cmap``);
errors and standard deviations use :data:`ERROR_CMAP` on one shared scale; other scalar
fields (maps, entropies) use :data:`FIELD_CMAP`.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: Resolution of every saved figure (dots per inch).
DPI = 110
#: Colour map of absolute errors and posterior standard deviations.
ERROR_CMAP = "magma"
#: Colour map of scalar fields that are not images (ERA5 maps, entropy heat maps).
FIELD_CMAP = "viridis"

#: The rcParams every figure is drawn with.
STYLE: dict[str, object] = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "figure.constrained_layout.use": True,  # colourbars and suptitles laid out without overlap
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "savefig.format": "png",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "figure.titlesize": 10,
    "image.cmap": "gray",
    "grid.alpha": 0.3,
}

#: Font size of the titles of small panels in image grids (truth, mean, std, ...).
PANEL_TITLE_SIZE = 8


def apply() -> None:
    """Set :data:`STYLE` in ``matplotlib.rcParams`` (done on import; call again after a reset)."""
    plt.rcParams.update(STYLE)


apply()

__all__ = ["DPI", "ERROR_CMAP", "FIELD_CMAP", "PANEL_TITLE_SIZE", "STYLE", "apply", "plt"]
