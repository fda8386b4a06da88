"""Observations of the fwd stage: sinograms of 2D slices, never the images (what a scanner gives).

The training path of the stage (:mod:`.model`, :func:`.run.train`) reads a projection store
(``diffinv ingest ct``) through :func:`load_observations` only, which opens the store with its
``truth`` variable dropped, so ground truth cannot reach a training loss (Tewari et al. 2023,
"Diffusion with Forward Models", §3: supervision in observation space only). Truth is read for
evaluation by :func:`diffinv.stages.fwd.evaluate.load_truth`, a module training never imports.

Units (those of :class:`~diffinv.stages.ct3d.volumes.CTStore.operator`): lengths in pixels, so the
operator's weights are path lengths in pixels; sinograms are the store's line integrals divided
by the pixel size, and A maps images in the store's attenuation units (``truth`` units, e.g.
attenuation / mu_max) to them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from diffinv.errors import ConfigError, InputError
from diffinv.operators.ct import ParallelBeamCT

TRUTH = "truth"
"""The store variable the training path never opens."""


@dataclass(frozen=True)
class SliceObservations:
    """Sinograms of 2D slices, never the images: what a scanner gives.

    ``sinograms`` (n, n_angles, n_det) float32 are line integrals in pixel units (the store's
    values divided by ``pixel_size``); ``angles_rad`` the view angles; ``detector`` the bin
    centres in pixels; ``case_ids`` ``"volume:slice"`` (slice: the projection index in the store);
    ``noise_std`` the per-bin standard deviation of the measurement noise in the sinograms'
    units (``noise_model`` says how it was obtained); ``pixel_size`` the pixel side in the store's
    length unit ``length_units``.
    """

    sinograms: np.ndarray
    angles_rad: np.ndarray
    detector: np.ndarray
    image_shape: tuple[int, int]
    case_ids: tuple[str, ...]
    noise_std: float
    pixel_size: float = 1.0
    length_units: str = "pixel"
    noise_model: str = ""
    source: str = ""

    @property
    def n_angles(self) -> int:
        """Views per sinogram."""
        return len(self.angles_rad)

    def select(self, index: np.ndarray) -> SliceObservations:
        """The observations of slices ``index`` (same geometry and noise)."""
        index = np.asarray(index)
        return SliceObservations(
            self.sinograms[index],
            self.angles_rad,
            self.detector,
            self.image_shape,
            tuple(self.case_ids[i] for i in index),
            self.noise_std,
            self.pixel_size,
            self.length_units,
            self.noise_model,
            self.source,
        )


def _open_without_truth(store: Path) -> xr.Dataset:
    """The projection store opened lazily with its ``truth`` variable dropped (never read)."""
    if not store.exists():
        raise InputError(store, "no such zarr store", "run 'diffinv ingest ct' first, or fix the path")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
            ds = xr.open_zarr(store, consolidated=False, drop_variables=(TRUTH,))
    except Exception as exc:  # zarr raises several types for a broken store
        raise InputError(
            store, f"not a readable zarr store ({type(exc).__name__}: {exc})", "re-ingest"
        ) from exc
    if "sinogram" not in ds or "angle" not in ds.coords or "detector" not in ds.coords:
        raise InputError(store, "not a CT projection store", "pass a store written by 'diffinv ingest ct'")
    return ds


def _image_shape(ds: xr.Dataset, store: Path, image_size: int | None) -> tuple[int, int]:
    """The reconstruction grid: the store's ``y``/``x`` coordinates, else ``image_size``."""
    if "y" in ds.coords and "x" in ds.coords:
        shape = (ds.sizes["y"], ds.sizes["x"])
        if image_size is not None and (image_size, image_size) != shape:
            raise ConfigError(
                f"fwd.data.image_size: {image_size} but {store} has a {shape[0]}x{shape[1]} grid "
                "(fix: set it to null or to the store's grid)"
            )
        return shape
    if image_size is None:
        raise ConfigError(
            f"fwd.data.image_size: {store} has no image grid (no y/x coordinates) "
            "(fix: set fwd.data.image_size to the reconstruction size in pixels)"
        )
    return (int(image_size), int(image_size))


def _noise_std(ds: xr.Dataset, sinograms_m: np.ndarray, pixel_size: float) -> tuple[float, str]:
    """Per-bin noise std in pixel units, and how it was obtained.

    With ``photons_per_pixel`` N0 and ``mu_max`` (LoDoPaB): y = −ln(N/N0)/mu_max with
    N ~ Poisson(N0 e^{−mu_max y}) has Var y ≈ e^{mu_max y} / (N0 mu_max²) (delta method); the
    value is the root mean of that variance over the loaded bins. Otherwise the robust estimate
    1.4826 · median |Δ²y| / √6 along the detector (second differences of a smooth sinogram
    are noise, with variance 6σ²).
    """
    attrs = ds.attrs
    if "photons_per_pixel" in attrs and "mu_max" in attrs:
        n0, mu = float(attrs["photons_per_pixel"]), float(attrs["mu_max"])
        var = np.exp(mu * sinograms_m.astype(np.float64)) / (n0 * mu**2)
        return float(np.sqrt(var.mean())) / pixel_size, "poisson: photons_per_pixel and mu_max (delta method)"
    d2 = np.diff(sinograms_m.astype(np.float64), 2, axis=-1)
    return float(
        1.4826 * np.median(np.abs(d2)) / np.sqrt(6.0)
    ) / pixel_size, "estimated: MAD of Δ² along detector"


def load_observations(
    store: Path, volumes: Sequence[int], slices_per_volume: int, image_size: int | None = None
) -> SliceObservations:
    """Sinograms of every slice of ``volumes`` (volume v = projections [v·S, (v+1)·S), S =
    ``slices_per_volume``), in pixel units, from a store opened without its ``truth``."""
    store = Path(store)
    ds = _open_without_truth(store)
    n_proj = ds.sizes["projection"]
    if slices_per_volume < 1 or n_proj % slices_per_volume:
        raise ConfigError(
            f"fwd.data.volume_slices: {slices_per_volume} does not divide the {n_proj} projections "
            f"of {store} "
            "(fix: set it to a divisor)"
        )
    n_vol = n_proj // slices_per_volume
    bad = [v for v in volumes if not 0 <= int(v) < n_vol]
    if bad or not len(volumes):
        raise ConfigError(
            f"fwd.data: volumes {list(volumes)} are not in [0, {n_vol}) for {store} "
            f"({n_vol} volumes of {slices_per_volume} slices) (fix: pick volumes in range)"
        )
    rows = np.concatenate([np.arange(v * slices_per_volume, (v + 1) * slices_per_volume) for v in volumes])
    sino_m = np.asarray(ds["sinogram"].isel(projection=rows).values, np.float32)
    if not np.isfinite(sino_m).all():
        raise InputError(store, f"non-finite sinogram values in volumes {list(volumes)}", "re-ingest")
    shape = _image_shape(ds, store, image_size)
    dense = ParallelBeamCT.from_store(ds, shape)
    p = dense.pixel_size
    noise, model = _noise_std(ds, sino_m, p)
    return SliceObservations(
        sinograms=(sino_m / p).astype(np.float32),
        angles_rad=np.asarray(ds["angle"].values, np.float64),
        detector=np.asarray(ds["detector"].values, np.float64) / p,
        image_shape=shape,
        case_ids=tuple(
            f"{v}:{r}" for v in volumes for r in range(v * slices_per_volume, (v + 1) * slices_per_volume)
        ),
        noise_std=noise,
        pixel_size=p,
        length_units=str(ds.attrs.get("detector_units", "pixel")),
        noise_model=model,
        source=store.name,
    )


def case_rows(case_ids: Sequence[str]) -> np.ndarray:
    """Projection indices (store rows) of ``"volume:slice"`` case identities."""
    try:
        return np.array([int(c.split(":")[1]) for c in case_ids], dtype=np.int64)
    except (IndexError, ValueError) as exc:
        raise InputError(
            "case_ids", f"not of the form 'volume:slice' ({exc})", "use SliceObservations.case_ids"
        ) from exc


def operator_for(obs: SliceObservations, angle_index: np.ndarray) -> ParallelBeamCT:
    """The parallel-beam operator (pixel units) of the views ``angle_index`` of ``obs``.

    Its ``noise_std`` is the observations' per-bin noise.
    """
    det = obs.detector
    spacing = float(det[1] - det[0]) if len(det) > 1 else 1.0
    return ParallelBeamCT(
        obs.image_shape,
        obs.angles_rad[np.asarray(angle_index)],
        len(det),
        1.0,
        spacing,
        float(det.mean()),
        obs.noise_std,
    )
