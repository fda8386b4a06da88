"""Atmospheric observation operators: exact adjoints, conservation and interpolation identities."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffinv.diffusion.schedule import VPSchedule
from diffinv.errors import ConfigError
from diffinv.guidance.gaussian_score import GaussianScore
from diffinv.operators import adjointness_error
from diffinv.operators.atmos import (
    EARTH_RADIUS_KM,
    CoarseGrain,
    StationOperator,
    coarse_coordinates,
    coarse_edges,
    interpolate_levels,
    latitude_weights,
    nearest_station_distance_km,
)

H, W, C = 33, 49, 3
LAT = np.linspace(20.0, 68.0, H)  # 1.5° rows
LON = np.linspace(-30.0, 42.0, W)  # 1.5° columns
# Stations inside cells, on grid lines, at the four corners and at an interior node.
ST_LAT = np.array([33.3, 20.0, 68.0, 20.0, 68.0, 44.0, 50.75, 67.9])
ST_LON = np.array([1.2, -30.0, 42.0, 42.0, -30.0, 6.0, -29.99, 41.95])


def _field(a: np.ndarray, b: np.ndarray, c: np.ndarray, lat=LAT, lon=LON) -> torch.Tensor:
    """(1, C, H, W) field a_c·lat + b_c·lon + c_c."""
    grid = a[:, None, None] * lat[None, :, None] + b[:, None, None] * lon[None, None, :] + c[:, None, None]
    return torch.from_numpy(grid)[None]


@pytest.mark.parametrize("factor", [4, 8])
@pytest.mark.parametrize("weighted", [False, True])
def test_coarse_grain_adjoint_on_odd_shapes(factor, weighted, rng):
    op = CoarseGrain((H, W), factor, LAT if weighted else None)
    assert op.coarse_shape == (math.ceil(H / factor), math.ceil(W / factor))
    x = torch.randn(2, C, H, W, dtype=torch.float64, generator=rng)
    y = torch.randn(2, C, *op.coarse_shape, dtype=torch.float64, generator=rng)
    assert adjointness_error(op, x, y) < 1e-13
    assert adjointness_error(op, x.float(), y.float()) < 1e-6


@pytest.mark.parametrize("factor", [4, 8])
def test_coarse_grain_preserves_the_area_integral(factor, rng):
    """Σ_coarse area_block·value = Σ_fine area_cell·value, on a global grid with pole rows."""
    lat = np.linspace(-90.0, 90.0, H)  # 5.625° rows, H = 33: the last block is the north-pole row alone
    op = CoarseGrain((H, W), factor, lat)
    x = torch.randn(2, C, H, W, dtype=torch.float64, generator=rng)
    cell = torch.from_numpy(latitude_weights(lat))[:, None].expand(H, W)
    blocks = [slice(i, i + factor) for i in range(0, H, factor)]
    cols = [slice(j, j + factor) for j in range(0, W, factor)]
    area = torch.tensor([[float(cell[b, c].sum()) for c in cols] for b in blocks], dtype=torch.float64)
    fine = (x * cell).sum((-1, -2))
    coarse = (op.A(x) * area).sum((-1, -2))
    assert torch.allclose(coarse, fine, rtol=1e-13, atol=0)
    # the partial last blocks average only the cells that exist: here the pole row's last 1 column
    assert torch.allclose(op.A(x)[..., -1, -1], x[..., -1, -1], rtol=0, atol=1e-14)


def test_latitude_weights_are_cos_latitude_inside_and_positive_at_the_poles():
    lat = np.linspace(-90.0, 90.0, 13)  # 15° rows
    w = latitude_weights(lat)
    inner = w[1:-1] / np.cos(np.radians(lat[1:-1]))
    assert np.allclose(inner, 2 * np.sin(np.radians(7.5)), rtol=1e-13)  # 2 sin(Δ/2) cos φ
    assert np.isclose(w[0], 1 - np.sin(np.radians(82.5)), rtol=1e-13)  # polar cap of 7.5°
    assert np.isclose(w.sum(), 2.0, rtol=1e-13)  # sin 90° − sin(−90°): the whole sphere


def test_coarse_grain_of_a_block_uniform_field_is_its_value_and_unweighted_means_are_plain():
    op = CoarseGrain((9, 10), 4)
    x = torch.arange(90, dtype=torch.float64).reshape(1, 1, 9, 10)
    y = op.A(x)[0, 0]
    assert op.coarse_shape == (3, 3)
    assert float(y[0, 0]) == float(x[0, 0, :4, :4].mean())
    assert float(y[2, 2]) == float(x[0, 0, 8, 8:].mean())  # row 8 and columns 8-9 only
    assert float(y[1, 2]) == float(x[0, 0, 4:8, 8:].mean())


def test_coarse_coordinates_are_the_coarse_grained_coordinate_fields():
    lat_c, lon_c = coarse_coordinates(LAT, LON, 8)
    op = CoarseGrain((H, W), 8, LAT)
    lat_field = torch.from_numpy(np.broadcast_to(LAT[:, None], (H, W)).copy())[None, None]
    lon_field = torch.from_numpy(np.broadcast_to(LON[None, :], (H, W)).copy())[None, None]
    assert np.allclose(op.A(lat_field)[0, 0].numpy(), lat_c[:, None], rtol=0, atol=1e-12)
    assert np.allclose(op.A(lon_field)[0, 0].numpy(), lon_c[None, :], rtol=0, atol=1e-12)
    assert lon_c[-1] == LON[-1]  # the last block of 49 columns holds column 48 alone
    sym_c, _ = coarse_coordinates(np.arange(-4.0, 5.0), np.arange(3.0), 9)
    assert abs(sym_c[0]) < 1e-14  # a block symmetric about the equator is centred on it
    assert lat_c[0] < LAT[:8].mean()  # area weights pull the centre towards the equator


def test_coarse_edges_are_the_fine_cell_edges_of_each_block():
    """LAT has 1.5° rows from 20°: cell edges 19.25 + 1.5 i; blocks of 8 start at rows 0, 8, ..., 32."""
    assert np.allclose(coarse_edges(LAT, 8), [19.25, 31.25, 43.25, 55.25, 67.25, 68.75], rtol=0, atol=1e-12)
    assert np.allclose(coarse_edges(LAT[::-1], 32), [68.75, 20.75, 19.25], rtol=0, atol=1e-12)


def test_station_operator_adjoint_with_channels_noise_and_missing_entries(rng):
    ch = np.array([2, 0, 2, 1])  # channel 2 observed twice (e.g. two variables mapped to it)
    observed = np.ones((len(ST_LAT), 4), bool)
    observed[1, 2] = observed[5, 0] = False
    op = StationOperator(
        LAT, LON, ST_LAT, ST_LON, ch, noise_std=np.array([0.5, 1.0, 2.0, 0.3]), channels=C, observed=observed
    )
    x = torch.randn(2, C, H, W, dtype=torch.float64, generator=rng)
    y = torch.randn(2, len(ST_LAT), 4, dtype=torch.float64, generator=rng)
    assert adjointness_error(op, x, y) < 1e-13
    plain = StationOperator(LAT[::-1].copy(), LON, ST_LAT, ST_LON)  # descending latitudes, all channels
    assert adjointness_error(plain, x, torch.randn(2, len(ST_LAT), C, dtype=torch.float64)) < 1e-13


@pytest.mark.parametrize("descending", [False, True])
def test_bilinear_interpolation_is_exact_on_linear_fields(descending, rng):
    a, b, c = np.array([0.3, -1.1, 2.0]), np.array([0.7, 0.05, -0.4]), np.array([5.0, -2.0, 0.1])
    lat = LAT[::-1].copy() if descending else LAT
    op = StationOperator(lat, LON, ST_LAT, ST_LON, channels=C)
    x = _field(a, b, c, lat=lat)
    exact = a[None, :] * ST_LAT[:, None] + b[None, :] * ST_LON[:, None] + c[None, :]
    assert np.allclose(op.A(x)[0].numpy(), exact, rtol=0, atol=1e-12)
    assert np.allclose(op.interpolate(x)[0].numpy(), exact, rtol=0, atol=1e-12)
    # a station on a grid node returns that node exactly
    assert float(op.A(x)[0, 5, 1]) == float(x[0, 1, list(lat).index(44.0), list(LON).index(6.0)])


def test_periodic_grid_interpolates_across_the_seam():
    lon = np.arange(0.0, 360.0, 2.5)  # 144 columns, global
    lat = np.linspace(-10.0, 10.0, 5)
    profile = np.cos(np.radians(lon)) + 3 * np.sin(np.radians(2 * lon))
    x = torch.from_numpy(np.broadcast_to(profile, (5, 144)).copy())[None, None]
    op = StationOperator(lat, lon, np.array([0.0, 0.0, 5.0]), np.array([359.0, -1.0, 181.0]), periodic=True)
    v = op.A(x)[0, :, 0].numpy()
    seam = 0.4 * profile[-1] + 0.6 * profile[0]  # 359° lies 0.6 of the way from 357.5° to 360°
    assert v[0] == pytest.approx(seam, abs=1e-14) and v[1] == pytest.approx(seam, abs=1e-14)
    assert v[2] == pytest.approx(0.6 * profile[72] + 0.4 * profile[73], abs=1e-14)
    assert (
        adjointness_error(
            op, torch.randn(2, 1, 5, 144, dtype=torch.float64), torch.randn(2, 3, 1, dtype=torch.float64)
        )
        < 1e-13
    )
    with pytest.raises(ConfigError, match="station 0 at lat 0.0, lon 359.0"):
        StationOperator(lat, lon, np.array([0.0]), np.array([359.0]))
    with pytest.raises(ConfigError, match="periodic=True needs a global longitude"):
        StationOperator(LAT, LON, ST_LAT, ST_LON, periodic=True)


def test_station_outside_the_grid_is_refused_with_its_index_and_position():
    with pytest.raises(ConfigError, match=r"station 2 at lat 70\.5, lon 3\.0 .*drop it or widen the domain"):
        StationOperator(LAT, LON, np.array([30.0, 40.0, 70.5]), np.array([0.0, 1.0, 3.0]))
    with pytest.raises(ConfigError, match="needs channels=C"):
        StationOperator(LAT, LON, ST_LAT, ST_LON, np.array([0, 2]))


def test_whitened_operator_gives_the_exact_per_channel_likelihood_in_gaussian_score(rng):
    """LikelihoodTerm(op, op.whiten(y), op.noise_std) with γ = 0: −Σ_observed (y − Px)²/(2σ_k²)."""
    sigma = np.array([0.5, 2.0, 0.1])
    y = np.random.default_rng(0).normal(size=(len(ST_LAT), C))
    y[3, 1] = np.nan  # a missing level
    op = StationOperator(LAT, LON, ST_LAT, ST_LON, noise_std=sigma, channels=C, observed=np.isfinite(y))
    x = torch.randn(4, C, H, W, dtype=torch.float64, generator=rng)
    guidance = GaussianScore(op, op.whiten(y)[None], gamma=0.0)
    got = guidance.loglik(SimpleNamespace(schedule=VPSchedule()), x, torch.full((4,), 0.5))
    r = np.nan_to_num(y[None] - op.interpolate(x).numpy())
    assert np.allclose(got.numpy(), -(r**2 / (2 * sigma**2)).sum((1, 2)), rtol=1e-12)
    assert op.noise_std == pytest.approx(np.sqrt(np.mean(sigma**2)), rel=1e-15)
    with pytest.raises(ConfigError, match="station 3, channel 1 marked observed"):
        StationOperator(LAT, LON, ST_LAT, ST_LON, noise_std=sigma, channels=C).whiten(y)


def test_interpolate_levels_is_linear_in_log_pressure():
    p = np.array([500.0, 1000.0, np.nan, 850.0, 300.0, 700.0])  # unsorted, one missing pressure
    v = 7.0 - 3.0 * np.log(np.nan_to_num(p, nan=1.0))
    v[4] = np.nan  # missing value at 300 hPa: the profile then ends at 500 hPa
    levels = np.array([1000.0, 925.0, 600.0, 500.0, 400.0, 1050.0])
    out = interpolate_levels(p, v, levels)
    expected = 7.0 - 3.0 * np.log(levels)
    assert np.allclose(out[:4], expected[:4], rtol=0, atol=1e-13)
    assert np.isnan(out[4:]).all()
    assert np.isnan(interpolate_levels(np.array([np.nan]), np.array([1.0]), levels)).all()
    same = interpolate_levels(np.array([850.0, 850.0, 500.0]), np.array([1.0, 1.0, 2.0]), np.array([850.0]))
    assert same[0] == 1.0
    with pytest.raises(ConfigError, match="850.0 hPa appears twice"):
        interpolate_levels(np.array([850.0, 850.0, 500.0]), np.array([1.0, 1.5, 2.0]), levels)


def test_nearest_station_distance_matches_great_circle_closed_forms():
    lat, lon = np.array([0.0, 45.0, 90.0]), np.array([0.0, 90.0, 180.0])
    d = nearest_station_distance_km(lat, lon, np.array([0.0]), np.array([0.0]))
    quarter = math.pi / 2 * EARTH_RADIUS_KM  # 10 007.5 km
    assert d[0, 0] == 0.0
    assert d[0, 1] == pytest.approx(quarter, rel=1e-13)
    assert d[2, 1] == pytest.approx(quarter, rel=1e-13)  # the pole, from any longitude
    assert d[0, 2] == pytest.approx(2 * quarter, rel=1e-13)
    assert d[1, 0] == pytest.approx(quarter / 2, rel=1e-13)
    both = nearest_station_distance_km(lat, lon, np.array([0.0, 90.0]), np.array([0.0, 0.0]))
    assert both[1, 1] == pytest.approx(
        quarter / 2, rel=1e-13
    )  # (45°N, 90°E): 90° from (0, 0), 45° from the pole
    assert both[0, 2] == pytest.approx(quarter, rel=1e-13)  # the pole is nearer than the antipode
