"""Atmospheric fields for the super-resolution stage: channels, split, normalisation, padding, sites.

Fields come from an ingested ERA5 store (or any dataset in the :func:`diffinv.io.era5.read_era5`
schema) as ``(time, C, H, W)`` float32, one channel per variable and pressure level
(single-level variables such as ``t2m`` give one channel). Each variable is normalised by
the mean and standard deviation of its training times (Multimodal Atmospheric
Super-Resolution With Deep Generative Models, 2025, §3: "fields normalised per variable"),
stored with the checkpoint. Grids whose sides do not divide the network's downsampling are
padded inside the prior (:class:`PaddedDenoiser`): reflected in latitude, periodic in
longitude when the grid is global, and cropped back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from diffinv.diffusion.denoisers import Denoiser, content_hash, fingerprint
from diffinv.errors import ConfigError
from diffinv.stages.core import case_key

SITE_KEY = "atmos:stations"  # identity of the random station draw (seeded from config seed)


@dataclass(frozen=True)
class Channel:
    """One channel of the fine field: a variable and, for pressure-level variables, its level (hPa)."""

    variable: str
    level: float | None

    @property
    def name(self) -> str:
        """``t850`` for a level, the variable for a single-level field."""
        return self.variable if self.level is None else f"{self.variable}{self.level:g}"


@dataclass
class Fields:
    """Fine fields (time, C, H, W) with their channels, grid and the variables' CF attributes."""

    values: np.ndarray
    channels: list[Channel]
    times: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    attrs: dict[str, dict[str, str]]

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the grid."""
        return int(self.values.shape[-2]), int(self.values.shape[-1])

    @property
    def periodic(self) -> bool:
        """Whether the longitudes close the globe (then padding wraps in longitude)."""
        lon = self.longitude
        return len(lon) > 1 and bool(np.isclose(abs(lon[1] - lon[0]) * len(lon), 360.0))


def open_fields(ds: xr.Dataset, data: Mapping[str, Any], source: str = "atmos.data") -> Fields:
    """The configured variables and levels of ``ds`` as :class:`Fields`.

    ``data`` is the ``atmos.data`` section: ``variables`` (short names) and ``levels``
    (hPa, for the variables that have a ``level`` dimension). A missing variable or level
    is a one-line :class:`ConfigError` naming the field.
    """
    variables = list(data["variables"])
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise ConfigError(
            f"{source}.variables: {missing[0]!r} is not in the store "
            f"(fix: use some of {', '.join(map(str, ds.data_vars))})"
        )
    levels = data.get("levels")
    blocks, channels = [], []
    for var in variables:
        da = ds[var]
        if "member" in da.dims:
            raise ConfigError(
                f"{source}.variables: {var!r} has ensemble members (fix: ingest one member per store)"
            )
        if "level" in da.dims:
            if not levels:
                raise ConfigError(
                    f"{source}.levels: {var!r} has pressure levels (fix: list the levels to use, hPa)"
                )
            have = ds["level"].values
            for lev in levels:
                hit = np.flatnonzero(np.isclose(have, float(lev)))
                if not len(hit):
                    raise ConfigError(
                        f"{source}.levels: {lev} hPa is not in the store "
                        f"(fix: use some of {', '.join(f'{v:g}' for v in have)})"
                    )
                blocks.append(da.isel(level=int(hit[0])).transpose("time", "latitude", "longitude").values)
                channels.append(Channel(var, float(lev)))
        else:
            blocks.append(da.transpose("time", "latitude", "longitude").values)
            channels.append(Channel(var, None))
    values = np.stack(blocks, axis=1).astype(np.float32)
    if not np.isfinite(values).all():
        raise ConfigError(
            f"{source}.variables: the selected fields contain NaN (fix: select complete fields)"
        )
    attrs = {
        v: {k: str(ds[v].attrs[k]) for k in ("units", "long_name", "standard_name") if k in ds[v].attrs}
        for v in variables
    }
    return Fields(values, channels, ds["time"].values, ds["latitude"].values, ds["longitude"].values, attrs)


def time_indices(times: np.ndarray, span: Sequence[Any], field: str) -> np.ndarray:
    """Indices of ``times`` in ``span``: ``[start, stop)`` integers, or ``[first, last]`` ISO dates
    (both included)."""
    a, b = span
    if isinstance(a, int) and isinstance(b, int):
        if not 0 <= a < b <= len(times):
            raise ConfigError(
                f"{field}: [{a}, {b}) is not inside the {len(times)} times (fix: 0 <= start < stop)"
            )
        return np.arange(a, b)
    lo, hi = np.datetime64(str(a)), np.datetime64(str(b))
    if len(str(b)) <= 10:  # a date: include the whole last day
        hi = hi + np.timedelta64(1, "D") - np.timedelta64(1, "ns")
    idx = np.flatnonzero((times >= lo) & (times <= hi))
    if not len(idx):
        raise ConfigError(f"{field}: no time in [{a}, {b}] (fix: the store has {times[0]} .. {times[-1]})")
    return idx


def split(times: np.ndarray, data: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Training and evaluation time indices from ``atmos.data`` (``train``, ``eval``, ``eval_stride``);
    overlapping spans are refused."""
    train = time_indices(times, data["train"], "atmos.data.train")
    evaluation = time_indices(times, data["eval"], "atmos.data.eval")[:: int(data.get("eval_stride", 1))]
    if np.intersect1d(train, evaluation).size:
        raise ConfigError("atmos.data.eval: overlaps atmos.data.train (fix: give disjoint time spans)")
    return train, evaluation


def calibration_times(
    times: np.ndarray, data: Mapping[str, Any], calibration: Mapping[str, Any]
) -> np.ndarray:
    """Time indices of ``atmos.calibration`` (``times``, ``stride``), refused where they share a
    time with the training times or the evaluated ones (``atmos.data``)."""
    idx = time_indices(times, calibration["times"], "atmos.calibration.times")[:: int(calibration["stride"])]
    train, evaluation = split(times, data)
    for name, other in (("atmos.data.train", train), ("the evaluated times (atmos.data.eval)", evaluation)):
        shared = np.intersect1d(idx, other)
        if shared.size:
            raise ConfigError(
                f"atmos.calibration.times: shares {shared.size} time(s) with {name}, e.g. "
                f"{times[shared[0]]} (fix: calibrate on other times of the store)"
            )
    return idx


@dataclass(frozen=True)
class Normalisation:
    """Per-variable x_n = (x − mean) / std over the training times (all levels of a variable share them)."""

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def of(cls, fields: Fields, train: np.ndarray) -> Normalisation:
        """Mean and std of each variable over the training times, grid and levels."""
        mean, std = {}, {}
        for var in dict.fromkeys(c.variable for c in fields.channels):
            k = [i for i, c in enumerate(fields.channels) if c.variable == var]
            x = fields.values[train][:, k].astype(np.float64)
            mean[var], std[var] = float(x.mean()), float(max(x.std(), 1e-12))
        return cls(mean, std)

    def vectors(self, channels: Sequence[Channel]) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (mean, std) as (C,) arrays."""
        return (
            np.array([self.mean[c.variable] for c in channels]),
            np.array([self.std[c.variable] for c in channels]),
        )

    def to_prior(self, x: np.ndarray | Tensor, channels: Sequence[Channel]) -> Any:
        """Normalise (…, C, H, W) physical fields."""
        m, s = self.vectors(channels)
        return (x - _like(m, x)) / _like(s, x)

    def to_data(self, x: np.ndarray | Tensor, channels: Sequence[Channel]) -> Any:
        """Undo :meth:`to_prior`."""
        m, s = self.vectors(channels)
        return x * _like(s, x) + _like(m, x)

    def as_dict(self) -> dict[str, dict[str, float]]:
        """JSON form (stored in the checkpoint's config.json)."""
        return {"mean": dict(self.mean), "std": dict(self.std)}


def _like(v: np.ndarray, x: np.ndarray | Tensor) -> Any:
    """(C,) vector shaped (C, 1, 1) in ``x``'s array type and dtype."""
    v = v[:, None, None]
    return torch.as_tensor(v, dtype=x.dtype, device=x.device) if isinstance(x, Tensor) else v.astype(x.dtype)


def padding(shape: tuple[int, int], multiple: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that makes both sides multiples of ``multiple``."""
    out: list[int] = []
    for n in shape:
        extra = -n % multiple
        out += [extra // 2, extra - extra // 2]
    return out[0], out[1], out[2], out[3]


def pad_fields(x: Tensor, pad: tuple[int, int, int, int], periodic: bool) -> Tensor:
    """Pad (n, C, H, W): reflect in latitude; in longitude periodic for a global grid, else reflect."""
    top, bottom, left, right = pad
    x = torch.nn.functional.pad(x, (0, 0, top, bottom), mode="reflect") if top or bottom else x
    if left or right:
        x = torch.nn.functional.pad(x, (left, right, 0, 0), mode="circular" if periodic else "reflect")
    return x


def crop(x: Tensor, pad: tuple[int, int, int, int]) -> Tensor:
    """Undo :func:`pad_fields`."""
    top, bottom, left, right = pad
    return x[..., top : x.shape[-2] - bottom, left : x.shape[-1] - right]


class PaddedDenoiser:
    """A prior trained on padded grids, seen on the unpadded grid: pad x_t, denoise, crop."""

    def __init__(self, prior: Denoiser, pad: tuple[int, int, int, int], periodic: bool) -> None:
        self.prior, self.pad, self.periodic = prior, pad, periodic
        self.schedule = prior.schedule

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return crop(self.prior(pad_fields(x, self.pad, self.periodic), t), self.pad)

    def fingerprint(self) -> str | None:
        """Content hash of the prior and the padding."""
        own = fingerprint(self.prior)
        return None if own is None else content_hash(("PaddedDenoiser", own, self.pad, self.periodic))

    @property
    def autocast(self) -> torch.dtype | None:
        """The prior's network precision (see :func:`diffinv.stages.core.network_precision`)."""
        return self.prior.autocast  # type: ignore[attr-defined]

    @autocast.setter
    def autocast(self, value: torch.dtype | None) -> None:
        self.prior.autocast = value  # type: ignore[attr-defined]

    def parameters(self) -> Any:
        """The prior network's parameters (for provenance of the dtype)."""
        return self.prior.parameters()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Sites:
    """Station sites: latitude, longitude and whether each is held out of the conditioning."""

    latitude: np.ndarray
    longitude: np.ndarray
    held_out: np.ndarray  # bool

    @property
    def used(self) -> np.ndarray:
        """Indices of the conditioning stations."""
        return np.flatnonzero(~self.held_out)

    @property
    def validation(self) -> np.ndarray:
        """Indices of the held-out stations."""
        return np.flatnonzero(self.held_out)


def station_sites(
    stations: Mapping[str, Any], latitude: np.ndarray, longitude: np.ndarray, seed: int
) -> Sites:
    """Fixed sites from ``atmos.observations.stations``: ``sites`` ([[lat, lon], ...]) or ``n_random``
    sites uniform inside the grid, drawn once from ``SeedSequence([seed, key("atmos:stations")])``;
    the last ``held_out`` sites are left out of the conditioning."""
    sites, n_random = stations.get("sites"), stations.get("n_random")
    if (sites is None) == (n_random is None):
        raise ConfigError(
            "atmos.observations.stations: give exactly one of sites and n_random (fix: remove one)"
        )
    lat_lo, lat_hi = float(latitude.min()), float(latitude.max())
    lon_lo, lon_hi = float(longitude.min()), float(longitude.max())
    if sites is not None:
        arr = np.asarray(sites, dtype=np.float64).reshape(-1, 2)
        outside = ~(
            (arr[:, 0] >= lat_lo) & (arr[:, 0] <= lat_hi) & (arr[:, 1] >= lon_lo) & (arr[:, 1] <= lon_hi)
        )
        if outside.any():
            k = int(np.flatnonzero(outside)[0])
            raise ConfigError(
                f"atmos.observations.stations.sites[{k}]: {arr[k].tolist()} is outside the grid "
                f"(fix: lat in [{lat_lo}, {lat_hi}], lon in [{lon_lo}, {lon_hi}])"
            )
    else:
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), case_key(SITE_KEY)]))
        arr = np.stack([rng.uniform(lat_lo, lat_hi, n_random), rng.uniform(lon_lo, lon_hi, n_random)], 1)
    held = int(stations.get("held_out", 0))
    if not 0 <= held < len(arr):
        raise ConfigError(
            f"atmos.observations.stations.held_out: {held} of {len(arr)} sites "
            "(fix: keep at least one in use)"
        )
    flags = np.zeros(len(arr), dtype=bool)
    flags[len(arr) - held :] = True
    return Sites(arr[:, 0].copy(), arr[:, 1].copy(), flags)


def load_fields(path: Path, data: Mapping[str, Any]) -> Fields:
    """:func:`open_fields` of an ingested ERA5 store or any file :func:`read_era5` reads."""
    from diffinv.io.era5 import read_era5

    return open_fields(read_era5(path).load(), data)


#: ERA5 short name -> IGRA v2 store variable of the same quantity and units (K).
IGRA_VARIABLES = {"t": "temperature"}


@dataclass
class Soundings:
    """Radiosonde values at the fields' channels: (time, S, C) physical, NaN where not observed."""

    station: np.ndarray
    latitude: np.ndarray
    longitude: np.ndarray
    values: np.ndarray


def read_soundings(path: Path, fields: Fields, times: np.ndarray) -> Soundings:
    """Soundings of an ingested IGRA store at ``times`` (nominal sounding times), interpolated to the
    channels' pressure levels (linear in log p, :func:`~diffinv.operators.atmos.interpolate_levels`).

    Stations inside the grid are kept, sorted by identifier; a channel is observed where its
    variable has an IGRA counterpart (:data:`IGRA_VARIABLES`), a level, and the sounding spans it.
    """
    from diffinv.io.store import open_zarr
    from diffinv.operators.atmos import interpolate_levels

    ds = open_zarr(path).load()
    if "pressure" not in ds or "station" not in ds.coords:
        raise ConfigError(
            f"atmos.observations.stations.source: {path} is not an IGRA store (fix: pass igra.zarr)"
        )
    lat, lon = ds["latitude"].values, ds["longitude"].values
    inside = (
        (lat >= fields.latitude.min())
        & (lat <= fields.latitude.max())
        & (lon >= fields.longitude.min())
        & (lon <= fields.longitude.max())
    )
    ids = np.array(sorted(set(ds["station"].values[inside].tolist())))
    if not ids.size:
        raise ConfigError(
            f"atmos.observations.stations.source: no station of {path} inside the grid (fix: widen it)"
        )
    first = [int(np.flatnonzero((ds["station"].values == s) & inside)[0]) for s in ids]
    values = np.full((len(times), len(ids), len(fields.channels)), np.nan)
    sounding_time = ds["time"].values
    for ti, t in enumerate(times):
        for si, s in enumerate(ids):
            hit = np.flatnonzero((ds["station"].values == s) & (sounding_time == t))
            if not hit.size:
                continue
            p = ds["pressure"].values[hit[0]]
            for k, c in enumerate(fields.channels):
                if c.level is not None and c.variable in IGRA_VARIABLES:
                    v = ds[IGRA_VARIABLES[c.variable]].values[hit[0]]
                    values[ti, si, k] = interpolate_levels(p, v, np.array([c.level]))[0]
    return Soundings(ids, lat[first], lon[first], values)


def igra_sites(soundings: Soundings, stations: Mapping[str, Any]) -> Sites:
    """The IGRA stations as sites; the last ``held_out`` (by identifier) leave the conditioning."""
    n, held = len(soundings.station), int(stations.get("held_out", 0))
    if not 0 <= held < n:
        raise ConfigError(
            f"atmos.observations.stations.held_out: {held} of {n} IGRA stations in the grid "
            "(fix: keep at least one in use)"
        )
    return Sites(soundings.latitude.copy(), soundings.longitude.copy(), np.arange(n) >= n - held)
