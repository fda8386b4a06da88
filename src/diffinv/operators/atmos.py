"""Observation operators of the atmospheric stage: coarse-graining and station interpolation.

Fields are (n, C, H, W) tensors on a regular latitude/longitude grid: C channels
(variable × pressure level), H latitudes, W longitudes. Two modalities observe them
(Chakraborty et al. 2025, arXiv 2506.22780; likelihood as in Rozet & Louppe 2023, SDA):

- :class:`CoarseGrain`: conservative block averages (the coarse field, A₁);
- :class:`StationOperator`: bilinear interpolation at radiosonde stations of the channels
  they observe (A₂), with per-channel noise folded into the operator by whitening so that
  one :class:`diffinv.guidance.gaussian_score.LikelihoodTerm` per modality suffices.

Coordinates are in degrees and must be strictly monotonic (ascending or descending).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from diffinv.errors import ConfigError
from diffinv.operators.base import LinearOperator

#: Mean Earth radius (km) of the haversine distance.
EARTH_RADIUS_KM = 6371.0


def _monotonic(coord: np.ndarray, name: str) -> np.ndarray:
    """``coord`` as float64, or ConfigError unless 1-D, finite and strictly monotonic."""
    c = np.asarray(coord, dtype=np.float64)
    if c.ndim != 1 or c.size < 2 or not np.isfinite(c).all():
        raise ConfigError(
            f"{name}: need a 1-D finite coordinate of at least 2 points (fix: pass the grid axis)"
        )
    d = np.diff(c)
    if not ((d > 0).all() or (d < 0).all()):
        raise ConfigError(f"{name}: coordinate is not strictly monotonic (fix: sort the grid axis)")
    return c


def cell_bounds(coord: np.ndarray) -> np.ndarray:
    """(N + 1) cell edges of grid points ``coord``: midpoints, the ends half a spacing out."""
    c = _monotonic(coord, "cell_bounds")
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def latitude_weights(latitudes: np.ndarray) -> np.ndarray:
    """Relative areas of the grid cells of each latitude row: |sin φ₊ − sin φ₋|.

    φ± are the cell edges (:func:`cell_bounds`, clipped to ±90°). On a regular grid
    sin(φ + Δ/2) − sin(φ − Δ/2) = 2 sin(Δ/2) cos φ, so interior rows are weighted exactly
    by cos(latitude); a pole row keeps the area of its polar cap instead of weight 0.
    """
    edges = np.radians(np.clip(cell_bounds(latitudes), -90.0, 90.0))
    return np.abs(np.diff(np.sin(edges)))


def _blocks(n: int, factor: int) -> list[slice]:
    return [slice(i, min(i + factor, n)) for i in range(0, n, factor)]


def _block_matrix(weights: np.ndarray, factor: int) -> np.ndarray:
    """(ceil(N/f), N) rows of normalised weights: row i averages block i (last block: what exists)."""
    blocks = _blocks(len(weights), factor)
    m = np.zeros((len(blocks), len(weights)))
    for i, b in enumerate(blocks):
        m[i, b] = weights[b] / weights[b].sum()
    return m


def _check_factor(factor: int) -> int:
    if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 1:
        raise ConfigError(
            f"coarse-graining factor must be a positive integer, got {factor!r} (fix: use 4 or 8)"
        )
    return int(factor)


class CoarseGrain(LinearOperator):
    """Conservative block average by ``factor``: (n, C, H, W) → (n, C, ⌈H/f⌉, ⌈W/f⌉).

    The coarse modality of Chakraborty et al. 2025 (arXiv 2506.22780). Each coarse value
    is the area-weighted mean of the fine cells of its block; where H or W is not a
    multiple of f the last block averages the cells that exist (no padding, no cell
    dropped). With ``latitudes`` the weights are the cell areas of
    :func:`latitude_weights` (∝ cos latitude), so Σ_coarse area_block · value equals
    Σ_fine area_cell · value exactly (area_block = the sum of its cells' areas); without,
    every cell weighs the same. A = R x Lᵀ with per-axis averaging matrices R and L, so
    Aᴴ = Rᵀ y L is the exact adjoint.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        factor: int,
        latitudes: np.ndarray | None = None,
        noise_std: float = 0.0,
    ) -> None:
        f = _check_factor(factor)
        h, w = (int(s) for s in shape)
        if latitudes is None:
            lat_w = np.ones(h)
        else:
            lat_w = latitude_weights(latitudes)
            if len(lat_w) != h:
                raise ConfigError(
                    f"CoarseGrain: {len(lat_w)} latitudes for a grid of {h} rows "
                    "(fix: pass the field's latitudes)"
                )
        self.shape = (h, w)
        self.factor = f
        self.noise_std = float(noise_std)
        self.rows = torch.from_numpy(_block_matrix(lat_w, f))
        self.cols = torch.from_numpy(_block_matrix(np.ones(w), f))
        self.coarse_shape: tuple[int, int] = (self.rows.shape[0], self.cols.shape[0])

    def _mats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        dtype = x.real.dtype
        return self.rows.to(device=x.device, dtype=dtype), self.cols.to(device=x.device, dtype=dtype)

    def A(self, x: Tensor) -> Tensor:
        r, c = self._mats(x)
        return torch.einsum("ih,...hw,jw->...ij", r, x, c)

    def A_adjoint(self, y: Tensor) -> Tensor:
        r, c = self._mats(y)
        return torch.einsum("ih,...ij,jw->...hw", r, y, c)


def coarse_coordinates(lat: np.ndarray, lon: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted centre of each :class:`CoarseGrain` block: (⌈H/f⌉,) latitudes, (⌈W/f⌉,) longitudes.

    Latitudes are averaged with the cell areas of :func:`latitude_weights` (as the
    field), longitudes uniformly (equal cell widths); the last block covers what exists.
    """
    f = _check_factor(factor)
    lat_c = _block_matrix(latitude_weights(lat), f) @ _monotonic(lat, "latitude")
    lon_a = _monotonic(lon, "longitude")
    return lat_c, _block_matrix(np.ones(len(lon_a)), f) @ lon_a


def coarse_edges(coord: np.ndarray, factor: int) -> np.ndarray:
    """(⌈N/f⌉ + 1) edges of the :class:`CoarseGrain` blocks along one axis: the fine cell edges
    (:func:`cell_bounds`) at every f-th cell and at the end (for drawing the coarse grid)."""
    f = _check_factor(factor)
    bounds = cell_bounds(coord)
    n = len(bounds) - 1
    return bounds[list(range(0, n, f)) + [n]]


def _bracket(coord: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left index i, fraction t (value = (1 − t) c[i] + t c[i+1]) and an inside-the-axis mask."""
    asc = coord if coord[1] > coord[0] else coord[::-1]
    n = len(asc)
    inside = (values >= asc[0]) & (values <= asc[-1])
    i = np.clip(np.searchsorted(asc, values, side="right") - 1, 0, n - 2)
    t = (values - asc[i]) / (asc[i + 1] - asc[i])
    if asc is not coord:  # descending axis: index and fraction counted from the other end
        i, t = n - 2 - i, 1 - t
    return i, t, inside


class StationOperator(LinearOperator):
    """Bilinear interpolation of selected channels at S stations: (n, C, H, W) → (n, S, K).

    The sounding modality of Chakraborty et al. 2025 (arXiv 2506.22780). Interpolation
    is bilinear in (latitude, longitude) degrees, so fields linear in latitude and
    longitude are reproduced exactly. ``channel_index`` (K,) picks the channels observed
    (the stage maps each sounding level to the channel of the same variable and level)
    and then needs ``channels`` = C, so that Aᴴ returns all C channels; without it every
    channel is observed (K = C). Station longitudes are taken modulo 360° into the grid's range;
    a station outside the grid is refused unless ``periodic`` (a global grid spanning
    360°), which interpolates across the seam between the last and first column.

    Missing values: ``observed`` (S, K) marks the entries that exist; A is zero elsewhere
    and :meth:`whiten` sets those entries of y to 0, so they add nothing to ‖y − A x‖².

    Per-channel noise (whitening): with ``noise_std`` an array σ_k (K,), A returns
    (σ̄/σ_k) · interpolation, where σ̄ = √(mean_k σ_k²) is the float ``self.noise_std``;
    :meth:`whiten` maps observations the same way. The residual then has variance σ̄² in
    every entry, so one ``LikelihoodTerm(op, op.whiten(y), op.noise_std)`` gives the
    exact Gaussian likelihood Σ r_k²/(2σ_k²). The score inflation γσ_t²/α_t² of
    :class:`~diffinv.guidance.gaussian_score.GaussianScore` then applies in whitened
    units: channel k is inflated by γσ_t²/α_t² · σ_k²/σ̄², the same on average over
    channels (σ̄ is their RMS). :meth:`interpolate` gives unwhitened values (metrics).

    Attributes: ``index`` and ``weights`` (S, 4), the flat grid indices and bilinear
    weights of each station's four corners; ``scale`` (K,) the whitening factors σ̄/σ_k;
    ``observed`` (S, K) the 0/1 mask; ``noise_std`` σ̄.
    """

    def __init__(
        self,
        latitudes: np.ndarray,
        longitudes: np.ndarray,
        station_lat: np.ndarray,
        station_lon: np.ndarray,
        channel_index: np.ndarray | None = None,
        periodic: bool = False,
        noise_std: float | np.ndarray = 0.0,
        channels: int | None = None,
        observed: np.ndarray | None = None,
    ) -> None:
        lat = _monotonic(latitudes, "StationOperator latitudes")
        lon = _monotonic(longitudes, "StationOperator longitudes")
        s_lat = np.atleast_1d(np.asarray(station_lat, dtype=np.float64))
        s_lon = np.atleast_1d(np.asarray(station_lon, dtype=np.float64))
        if (
            s_lat.ndim != 1
            or s_lat.shape != s_lon.shape
            or not (np.isfinite(s_lat).all() and np.isfinite(s_lon).all())
        ):
            raise ConfigError(
                "StationOperator: station_lat and station_lon must be finite 1-D arrays of the same length "
                "(fix: one latitude and one longitude per station)"
            )
        self.grid = (len(lat), len(lon))
        self.periodic = bool(periodic)
        lo = min(lon[0], lon[-1])
        step = abs(lon[1] - lon[0])
        if self.periodic and not math.isclose(
            abs(lon[-1] - lon[0]) + step, 360.0, abs_tol=1e-6 * step + 1e-9
        ):
            raise ConfigError(
                f"StationOperator: periodic=True needs a global longitude axis spanning 360° with regular "
                f"spacing, got {lon[0]}..{lon[-1]} step {step} (fix: pass periodic=False for a regional grid)"
            )
        raw_lon = s_lon
        s_lon = lo + np.mod(s_lon - lo, 360.0)
        i, ti, in_lat = _bracket(lat, s_lat)
        j, tj, in_lon = _bracket(lon, s_lon)
        j1 = j + 1
        if self.periodic:
            seam = s_lon > max(lon[0], lon[-1])  # between the last column and the first one + 360°
            last = 0 if lon[-1] < lon[0] else len(lon) - 1
            j = np.where(seam, last, j)
            j1 = np.where(seam, len(lon) - 1 - last, j1)
            tj = np.where(seam, (s_lon - lon[last]) / step, tj)
            in_lon = np.ones_like(in_lon)
        bad = np.flatnonzero(~(in_lat & in_lon))
        if bad.size:
            b = int(bad[0])
            raise ConfigError(
                f"StationOperator: station {b} at lat {s_lat[b]}, lon {raw_lon[b]} lies outside the grid "
                f"(lat {lat.min()}..{lat.max()}, lon {lon.min()}..{lon.max()}) "
                "(fix: drop it or widen the domain)"
            )
        s = len(s_lat)
        self.index = torch.from_numpy(
            np.stack(
                [i * len(lon) + j, i * len(lon) + j1, (i + 1) * len(lon) + j, (i + 1) * len(lon) + j1], 1
            )
        )  # (S, 4) flat indices of the four corners
        self.weights = torch.from_numpy(
            np.stack([(1 - ti) * (1 - tj), (1 - ti) * tj, ti * (1 - tj), ti * tj], 1)
        )  # (S, 4) bilinear weights, summing to 1
        if channel_index is None:
            self.channel_index = None
            self.channels = channels
            k = channels
        else:
            ch = np.asarray(channel_index)
            if ch.ndim != 1 or ch.size == 0 or not np.issubdtype(ch.dtype, np.integer) or (ch < 0).any():
                raise ConfigError(
                    "StationOperator: channel_index must be a non-empty 1-D array of channel numbers >= 0"
                )
            if channels is None or (ch >= channels).any():
                raise ConfigError(
                    f"StationOperator: channel_index (max {ch.max()}) needs channels=C, the field's channel "
                    f"count, above it; got channels={channels} (fix: pass channels=C so that the adjoint "
                    "returns (n, C, H, W))"
                )
            self.channel_index = torch.from_numpy(ch.astype(np.int64))
            self.channels = int(channels)
            k = len(ch)
        sigma = np.asarray(noise_std, dtype=np.float64)
        if k is None and (sigma.ndim > 0 or observed is not None):
            raise ConfigError(
                "StationOperator: per-channel noise_std or observed need the channel count "
                "(fix: pass channel_index or channels)"
            )
        if sigma.ndim == 0:
            if sigma < 0:
                raise ConfigError(f"StationOperator: noise_std {float(sigma)} < 0 (fix: give a std >= 0)")
            self.noise_std = float(sigma)
            scale = np.ones(1 if k is None else k)
        else:
            if sigma.shape != (k,) or not (sigma > 0).all() or not np.isfinite(sigma).all():
                raise ConfigError(
                    f"StationOperator: per-channel noise_std needs {k} finite values > 0, "
                    f"got shape {sigma.shape} "
                    "(fix: one std per observed channel, or one float)"
                )
            self.noise_std = float(np.sqrt(np.mean(sigma**2)))
            scale = self.noise_std / sigma
        self.scale = torch.from_numpy(scale)  # (K,) whitening factors σ̄/σ_k
        if observed is None:
            mask = np.ones((s, 1 if k is None else k))
        else:
            obs = np.asarray(observed)
            if obs.shape != (s, k) or obs.dtype != bool:
                raise ConfigError(
                    f"StationOperator: observed must be a boolean (S, K) = ({s}, {k}) array, got {obs.dtype} "
                    f"{obs.shape} (fix: pass np.isfinite(y))"
                )
            mask = obs.astype(np.float64)
        self.observed = torch.from_numpy(mask)

    def _factor(self, like: Tensor) -> Tensor:
        """(S, K) mask × whitening factor on ``like``'s device and dtype."""
        return (self.observed * self.scale).to(device=like.device, dtype=like.real.dtype)

    def interpolate(self, x: Tensor) -> Tensor:
        """(n, S, K) bilinear values of the observed channels, unwhitened and unmasked."""
        if self.channel_index is not None:
            x = x.index_select(-3, self.channel_index.to(x.device))
        corners = x.flatten(-2)[..., self.index.to(x.device)]  # (n, K, S, 4)
        vals = (corners * self.weights.to(device=x.device, dtype=x.real.dtype)).sum(-1)
        return vals.transpose(-1, -2)

    def A(self, x: Tensor) -> Tensor:
        return self.interpolate(x) * self._factor(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        v = (y * self._factor(y)).transpose(-1, -2)  # (n, K, S)
        contrib = (v[..., None] * self.weights.to(device=y.device, dtype=y.real.dtype)).flatten(-2)
        n, k = y.shape[0], y.shape[-1]
        h, w = self.grid
        per_k = y.new_zeros((n, k, h * w)).index_add_(-1, self.index.to(y.device).reshape(-1), contrib)
        if self.channel_index is not None:
            out = y.new_zeros((n, self.channels, h * w))
            per_k = out.index_add_(1, self.channel_index.to(y.device), per_k)
        return per_k.reshape(n, -1, h, w)

    def whiten(self, y: Tensor | np.ndarray) -> Tensor:
        """Observations (S, K) or (n, S, K) as the operator sees them: whitened, missing entries 0.

        Non-finite values at entries marked observed are refused (their y is undefined).
        """
        t = torch.as_tensor(y)
        observed = self.observed.to(t.device) > 0
        bad = ~torch.isfinite(t) & observed
        if bool(bad.any()):
            s, k = (int(v) for v in bad.reshape(-1, *bad.shape[-2:]).any(0).nonzero()[0])
            raise ConfigError(
                f"StationOperator.whiten: y is not finite at station {s}, channel {k} marked observed "
                "(fix: pass observed=np.isfinite(y) to StationOperator)"
            )
        t = torch.where(observed, t, torch.zeros_like(t))
        return t * self._factor(t)


def interpolate_levels(profile_p: np.ndarray, profile_v: np.ndarray, levels_hpa: np.ndarray) -> np.ndarray:
    """A sounding's values at ``levels_hpa``, linear in log-pressure; NaN outside its range.

    ``profile_p`` must be in hPa like ``levels_hpa``. Levels whose pressure or value is NaN
    are dropped first; a level exactly at the top or bottom of what remains is kept.
    Repeated pressures with equal values count once; with different values the profile is
    refused (which one holds is unknown).
    """
    p = np.asarray(profile_p, dtype=np.float64).ravel()
    v = np.asarray(profile_v, dtype=np.float64).ravel()
    if p.shape != v.shape:
        raise ConfigError(
            f"interpolate_levels: {p.size} pressures for {v.size} values (fix: pass one profile)"
        )
    keep = np.isfinite(p) & np.isfinite(v)
    p, v = p[keep], v[keep]
    target = np.asarray(levels_hpa, dtype=np.float64)
    if (p <= 0).any() or (target <= 0).any():
        raise ConfigError("interpolate_levels: pressures must be > 0 hPa (fix: drop non-positive levels)")
    out = np.full(target.shape, np.nan)
    if p.size == 0:
        return out
    order = np.argsort(p, kind="stable")
    p, v = p[order], v[order]
    same = np.flatnonzero(np.diff(p) == 0)
    if (v[same] != v[same + 1]).any():
        clash = p[same[v[same] != v[same + 1]][0]]
        raise ConfigError(
            f"interpolate_levels: pressure {clash} hPa appears twice with different values "
            "(fix: keep one of them)"
        )
    first = np.r_[True, np.diff(p) > 0]
    p, v = p[first], v[first]
    lp, lt = np.log(p), np.log(target)
    inside = (lt >= lp[0]) & (lt <= lp[-1])
    out[inside] = np.interp(lt[inside], lp, v)
    return out


def nearest_station_distance_km(
    latitudes: np.ndarray, longitudes: np.ndarray, station_lat: np.ndarray, station_lon: np.ndarray
) -> np.ndarray:
    """(H, W) great-circle distance (km) from each grid point to its nearest station.

    Haversine formula on a sphere of radius :data:`EARTH_RADIUS_KM`:
    d = 2R asin √(sin²(Δφ/2) + cos φ₁ cos φ₂ sin²(Δλ/2)).
    """
    s_lat = np.radians(np.atleast_1d(np.asarray(station_lat, dtype=np.float64)))
    s_lon = np.radians(np.atleast_1d(np.asarray(station_lon, dtype=np.float64)))
    if s_lat.size == 0 or s_lat.shape != s_lon.shape:
        raise ConfigError(
            "nearest_station_distance_km: need one latitude and one longitude per station, "
            "at least one station"
        )
    lat = np.radians(np.asarray(latitudes, dtype=np.float64))[:, None]
    lon = np.radians(np.asarray(longitudes, dtype=np.float64))[None, :]
    best = np.full((lat.shape[0], lon.shape[1]), np.inf)
    for a, b in zip(s_lat, s_lon):  # one station at a time: memory stays (H, W)
        h = np.sin((lat - a) / 2) ** 2 + np.cos(lat) * np.cos(a) * np.sin((lon - b) / 2) ** 2
        np.minimum(best, 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))), out=best)
    return best
