"""Atmospheric super-resolution verbs: train the fine-field prior; super-resolve evaluation times.

Multimodal Atmospheric Super-Resolution With Deep Generative Models (2025): a diffusion prior
on fine fields, conditioned zero-shot on a coarse field (block average by ``factor``) and on
station values through SDA's Gaussian score (Rozet & Louppe 2023), one likelihood term per
modality with its own noise and weight: Σ_m w_m log N(y_m; A_m x̂0, σ_m² + γ σ_t²/α_t²).
Other guidance plug-ins (DPS, ΠGDM, ...) see the modalities as one whitened stack
(:class:`WhitenedStack`). Operators act on normalised fields: block and bilinear weights sum
to one, so A(x_n) = (A(x) − mean) / std exactly, and noise levels are in units of each
variable's training std.

``sample`` writes one store per method: per variable the ensemble ``VAR`` (time, member,
[level,] latitude, longitude) with its mean and std, the truth, the coarse input, the bicubic
and conservative baselines, station observations (used and held-out sites), NFE, wall time
and each modality's χ²/dof of the ensemble mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from diffinv.errors import ConfigError, InputError
from diffinv.guidance.gaussian_score import LikelihoodTerm
from diffinv.operators.atmos import CoarseGrain, StationOperator, coarse_coordinates
from diffinv.operators.base import LinearOperator, inner
from diffinv.stages.atmos.data import (
    Channel,
    Fields,
    Normalisation,
    PaddedDenoiser,
    Soundings,
    calibration_times,
    igra_sites,
    load_fields,
    pad_fields,
    padding,
    read_soundings,
    split,
    station_sites,
    time_indices,
)
from diffinv.stages.core import (
    CaseSamples,
    CaseSeeds,
    Method,
    Problem,
    Sampling,
    posterior_variables,
    resume_key,
    sample_case,
    sampling_provenance,
    write_resumable,
)

MODALITIES = ("coarse", "stations")


def train(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv train atmos``: the prior on normalised, padded fine fields of the training times."""
    from diffinv.diffusion.schedule import VPSchedule
    from diffinv.diffusion.training import TrainConfig, train_prior

    at = cfg["atmos"]
    fields = load_fields(Path(args.data), at["data"])
    train_idx = time_indices(fields.times, at["data"]["train"], "atmos.data.train")
    prior = at["prior"]
    if prior["train"]["batch_size"] > len(train_idx):
        raise ConfigError(
            f"atmos.prior.train.batch_size: {prior['train']['batch_size']} is more than the "
            f"{len(train_idx)} training times (fix: set it to at most {len(train_idx)})"
        )
    norm = Normalisation.of(fields, train_idx)
    pad = padding(fields.shape, 2 ** (len(prior["network"]["widths"]) - 1))
    x = torch.from_numpy(norm.to_prior(fields.values[train_idx], fields.channels).astype(np.float32))
    images = pad_fields(x, pad, fields.periodic)
    network = {"size": list(images.shape[-2:]), "channels": len(fields.channels), **prior["network"]}
    info = {
        "source": str(args.data),
        "stage": "atmos",
        "channels": [[c.variable, c.level] for c in fields.channels],
        "times": [str(fields.times[train_idx[0]]), str(fields.times[train_idx[-1]])],
        "images": len(train_idx),
        "normalisation": norm.as_dict(),
        "grid": {"latitude": fields.latitude.tolist(), "longitude": fields.longitude.tolist()},
        "padding": list(pad),
        "periodic": fields.periodic,
        "representation": "per-variable (x - mean) / std, padded (reflect; circular longitude if global)",
    }
    train_prior(
        images,
        Path(args.output),
        network,
        VPSchedule(**prior["schedule"]),
        dataclasses.replace(TrainConfig(**prior["train"]), seed=cfg["seed"]),
        prior["clip"],
        info,
        device,
        not getattr(args, "quiet", False),
    )
    print(f"wrote {args.output}")


def load_prior(folder: Path, fields: Fields, device: str) -> tuple[PaddedDenoiser, Normalisation]:
    """The checkpoint's prior on the unpadded grid and its normalisation; refused for other channels
    or another grid."""
    from diffinv.diffusion.networks import checkpoint_config, load_denoiser

    info = checkpoint_config(folder).get("data") or {}
    if info.get("stage") != "atmos":
        raise InputError(folder / "config.json", "not an atmos prior", "train it with 'diffinv train atmos'")
    channels = [Channel(v, lev) for v, lev in info["channels"]]
    if channels != fields.channels:
        raise InputError(
            folder / "config.json",
            f"the prior's channels {[c.name for c in channels]} differ from the data's "
            f"{[c.name for c in fields.channels]}",
            "use a prior trained on atmos.data.variables and levels",
        )
    grid = info["grid"]
    if not (
        np.allclose(grid["latitude"], fields.latitude) and np.allclose(grid["longitude"], fields.longitude)
    ):
        raise InputError(folder / "config.json", "the prior was trained on another grid", "retrain it")
    norm = Normalisation(info["normalisation"]["mean"], info["normalisation"]["std"])
    pad = tuple(int(p) for p in info["padding"])
    return PaddedDenoiser(load_denoiser(folder, device), pad, bool(info["periodic"])), norm  # type: ignore[arg-type]


class WhitenedStack(LinearOperator):
    """Modalities stacked as one operator: A x = [√w_m A_m x / σ_m]_m (flattened), noise std 1.

    The likelihood Σ_m w_m ‖y_m − A_m x‖² / (2σ_m²) is ½‖ỹ − Ã x‖² of the stack, so guidance
    plug-ins that take one operator (DPS, ΠGDM) see all modalities with their weights.
    """

    def __init__(self, terms: Sequence[LikelihoodTerm]) -> None:
        self.terms = list(terms)
        self.scales = [float(np.sqrt(t.weight) / t.noise_std) for t in self.terms]
        self.shapes = [tuple(t.y.shape[1:]) for t in self.terms]
        self.noise_std = 1.0

    def A(self, x: Tensor) -> Tensor:
        parts = [s * t.operator.A(x).reshape(x.shape[0], -1) for s, t in zip(self.scales, self.terms)]
        return torch.cat(parts, 1)

    def A_adjoint(self, y: Tensor) -> Tensor:
        out, start = None, 0
        for s, t, shape in zip(self.scales, self.terms, self.shapes):
            size = int(np.prod(shape))
            part = t.operator.A_adjoint(s * y[:, start : start + size].reshape((y.shape[0], *shape)))
            out = part if out is None else out + part
            start += size
        assert out is not None
        return out

    def whiten(self) -> Tensor:
        """The stacked observation ỹ (batch of 1)."""
        return torch.cat([s * t.y.reshape(t.y.shape[0], -1) for s, t in zip(self.scales, self.terms)], 1)


def bicubic(coarse: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Bicubic (tensor-product cubic spline) interpolation of (C, h, w) block values, placed at
    the block centres (index space), onto the fine (C, H, W) grid; extrapolated beyond the outer
    centres; bilinear when a side has fewer than 4 blocks."""
    from scipy.interpolate import RegularGridInterpolator

    rows, cols = block_centres(shape[0], factor), block_centres(shape[1], factor)
    fine = np.stack(np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij"), -1)
    method = "cubic" if min(len(rows), len(cols)) >= 4 else "linear"
    out = [
        RegularGridInterpolator((rows, cols), c, method=method, bounds_error=False, fill_value=None)(fine)
        for c in coarse.astype(np.float64)
    ]
    return np.stack(out).astype(np.float32)


def conservative(coarse: np.ndarray, shape: tuple[int, int], factor: int) -> np.ndarray:
    """Piecewise-constant (C, H, W) field: each fine cell takes its block's value (block
    averaging it gives the coarse field back exactly)."""
    return np.repeat(np.repeat(coarse, factor, -2), factor, -1)[..., : shape[0], : shape[1]]


def block_centres(n: int, factor: int) -> np.ndarray:
    """Centres, in fine index units, of the blocks of ``factor`` cells (the last may be partial)."""
    return np.array([(i + min(i + factor, n) - 1) / 2 for i in range(0, n, factor)], dtype=np.float64)


@dataclasses.dataclass
class Observations:
    """One time's observations in normalised units: coarse field, all stations, and the truth."""

    truth: Tensor  # (1, C, H, W)
    coarse: Tensor  # (1, C, h, w)
    stations: Tensor  # (1, S, C), every site (used and held out); NaN where not observed
    stations_clean: Tensor  # (1, S, C), the truth at the sites

    @property
    def observed(self) -> np.ndarray:
        """(S, C) entries the stations observe."""
        return np.isfinite(self.stations[0].numpy())


class SuperResolution:
    """The posterior ensembles of one method at every evaluation time of a store.

    Station values are the truth at fixed sites plus noise (``stations.source: truth``) or the
    soundings of an IGRA store at the evaluation times (``source: igra``, ``--stations``).
    """

    def __init__(
        self, args: argparse.Namespace, cfg: dict[str, Any], device: str, calibration: bool = False
    ) -> None:
        at = cfg["atmos"]
        self.cfg, self.at, self.device = cfg, at, device
        (entry,) = at["sampling"]["methods"]
        self.entry, self.method = entry, Method.from_config(entry)
        self.modalities = list(entry.get("modalities") or MODALITIES)
        self.fields = load_fields(Path(args.data), at["data"])
        self.eval_idx = (
            calibration_times(self.fields.times, at["data"], at["calibration"])
            if calibration
            else split(self.fields.times, at["data"])[1]
        )
        self.prior, self.norm = load_prior(Path(args.prior), self.fields, device)
        overrides = {k: entry[k] for k in ("steps", "samples") if entry.get(k) is not None}
        self.sampling = Sampling.from_config(at["sampling"], final_dc=False, **overrides)
        obs = at["observations"]
        self.factor = int(obs["coarse"]["factor"])
        lat, lon = self.fields.latitude, self.fields.longitude
        self.coarse_op = CoarseGrain(
            self.fields.shape, self.factor, latitudes=lat, noise_std=obs["coarse"]["noise_std"]
        )
        self.soundings: Soundings | None = None
        if obs["stations"]["source"] == "igra":
            if not getattr(args, "stations", None):
                raise ConfigError(
                    "atmos.observations.stations.source: igra needs the IGRA store (fix: pass --stations)"
                )
            self.soundings = read_soundings(
                Path(args.stations), self.fields, self.fields.times[self.eval_idx]
            )
            self.sites = igra_sites(self.soundings, obs["stations"])
        else:
            self.sites = station_sites(obs["stations"], lat, lon, cfg["seed"])
        self.all_stations = self.station_operator(np.arange(len(self.sites.latitude)))
        self.record = {
            "step": "calibrate atmos" if calibration else "sample atmos",
            "config": cfg,
            "data": str(args.data),
            "prior": str(args.prior),
            "stations": str(getattr(args, "stations", None)),
        }

    def station_operator(self, which: np.ndarray, observed: np.ndarray | None = None) -> StationOperator:
        """Bilinear interpolation at sites ``which`` of every channel (``observed`` (S, C) masks)."""
        return StationOperator(
            self.fields.latitude,
            self.fields.longitude,
            self.sites.latitude[which],
            self.sites.longitude[which],
            periodic=self.fields.periodic,
            noise_std=self.at["observations"]["stations"]["noise_std"],
            channels=len(self.fields.channels),
            observed=observed,
        )

    def case_id(self, i: int) -> str:
        """Identity of evaluation time ``i`` (its ISO time): seeds depend on it only."""
        return f"atmos:{np.datetime_as_string(self.fields.times[i], unit='s')}"

    def observe(self, i: int) -> Observations:
        """Coarse field of time ``i`` from its truth and station values (truth at the sites, or the
        soundings), with noise seeded by the case."""
        x = torch.from_numpy(self.norm.to_prior(self.fields.values[i], self.fields.channels))[None].double()
        gen = torch.Generator().manual_seed(CaseSeeds.of(self.cfg["seed"], self.case_id(i)).mask)
        coarse = self.coarse_op.A(x)
        coarse = coarse + self.coarse_op.noise_std * torch.randn(
            coarse.shape, generator=gen, dtype=coarse.dtype
        )
        clean = self.all_stations.interpolate(x)
        if self.soundings is None:
            noisy = clean + self.all_stations.noise_std * torch.randn(
                clean.shape, generator=gen, dtype=clean.dtype
            )
        else:
            j = int(np.flatnonzero(self.eval_idx == i)[0])
            m, sd = self.norm.vectors(self.fields.channels)
            noisy = torch.from_numpy((self.soundings.values[j] - m) / sd)[None]
        return Observations(x.float(), coarse.float(), noisy.float(), clean.float())

    def terms(self, obs: Observations, modalities: Sequence[str] | None = None) -> list[LikelihoodTerm]:
        """One likelihood term per modality (default: the method's), held-out stations excluded and
        entries a sounding lacks masked."""
        cfg = self.at["observations"]
        used = self.sites.used
        op = self.station_operator(used, obs.observed[used])
        found = {
            "coarse": LikelihoodTerm(
                self.coarse_op,
                obs.coarse.to(self.device),
                cfg["coarse"]["noise_std"],
                cfg["coarse"]["weight"],
            ),
            "stations": LikelihoodTerm(
                op,
                op.whiten(obs.stations[:, used]).float().to(self.device),
                cfg["stations"]["noise_std"],
                cfg["stations"]["weight"],
            ),
        }
        return [found[m] for m in (self.modalities if modalities is None else modalities)]

    def problem(self, terms: Sequence[LikelihoodTerm]) -> tuple[Problem, Method]:
        """The core's problem and the case's method: Gaussian score gets one term per modality,
        other guidance the whitened stack."""
        shape = (len(self.fields.channels), *self.fields.shape)
        if self.method.guidance == "gaussian_score":
            first, rest = terms[0], list(terms[1:])
            options = {
                **self.method.guidance_options,
                "noise_std": first.noise_std,
                "weight": first.weight,
                "terms": rest,
            }
            return Problem(first.operator, first.y, shape), dataclasses.replace(
                self.method, guidance_options=options
            )
        stack = WhitenedStack(terms)
        return Problem(stack, stack.whiten(), shape), self.method

    def case(self, i: int) -> xr.Dataset:
        """The store block of evaluation time ``i`` (a time dim of 1)."""
        obs = self.observe(i)
        terms = self.terms(obs)
        problem, method = self.problem(terms)
        res = sample_case(
            problem,
            self.prior,
            method,
            self.sampling,
            CaseSeeds.of(self.cfg["seed"], self.case_id(i)),
            self.device,
        )
        return self._block(i, obs, res)

    def balance(self, mean: Tensor, obs: Observations) -> dict[str, float]:
        """χ²/dof of the ensemble mean against each modality's noise (normalised units), used or not:
        Σ r² / (σ² × observed entries)."""
        out = {}
        for name, term in zip(MODALITIES, self.terms(obs, MODALITIES)):
            r = term.y.double().cpu() - term.operator.A(mean.double())
            dof = float(term.operator.observed.sum()) if name == "stations" else r[0].numel()
            out[name] = float(inner(r, r)[0] / (max(dof, 1.0) * term.noise_std**2))
        return out

    def _block(self, i: int, obs: Observations, res: CaseSamples) -> xr.Dataset:
        f, ch = self.fields, self.fields.channels
        samples = self.norm.to_data(res.samples.double(), ch).numpy().astype(np.float32)  # (M, C, H, W)
        coarse = self.norm.to_data(obs.coarse[0].double(), ch).numpy().astype(np.float32)
        st_mean, st_std = self.norm.vectors(ch)
        stations = (obs.stations[0].double().numpy() * st_std + st_mean).astype(np.float32)
        stations_clean = (obs.stations_clean[0].double().numpy() * st_std + st_mean).astype(np.float32)
        fine = ("latitude", "longitude")
        cdims = ("coarse_latitude", "coarse_longitude")
        variables: dict[str, Any] = {}
        for var in dict.fromkeys(c.variable for c in ch):
            k = [j for j, c in enumerate(ch) if c.variable == var]
            lev: tuple[str, ...] = ("level",) if ch[k[0]].level is not None else ()
            sel = lambda a, kk=k, lv=lev: a[..., kk, :, :] if lv else a[..., kk[0], :, :]  # noqa: E731
            attrs = f.attrs.get(var, {})
            post = posterior_variables(sel(samples)[None], ("time", "member", *lev, *fine), "member", var)
            for key, (dims, values, a) in post.items():
                name = var if key == "samples" else f"{var}_{key}"
                variables[name] = (dims, values, {**attrs, "long_name": a["long_name"]})
            extra = {
                "truth": (fine, sel(f.values[i]), "truth (ERA5 field of this time)"),
                "coarse": (cdims, sel(coarse), f"coarse input: {self.factor}x block average + noise"),
                "bicubic": (
                    fine,
                    sel(bicubic(coarse, f.shape, self.factor)),
                    "bicubic interpolation of the coarse input",
                ),
                "conservative": (
                    fine,
                    sel(conservative(coarse, f.shape, self.factor)),
                    "piecewise-constant (conservative) interpolation of the coarse input",
                ),
            }
            for key, (dims, values, long_name) in extra.items():
                variables[f"{var}_{key}"] = (
                    ("time", *lev, *dims),
                    values[None],
                    {**attrs, "long_name": long_name},
                )
        variables["station_obs"] = (
            ("time", "station", "channel"),
            stations[None],
            {"long_name": "station observation (truth at the site + noise)"},
        )
        variables["station_truth"] = (
            ("time", "station", "channel"),
            stations_clean[None],
            {"long_name": "truth interpolated to the site"},
        )
        chi2 = self.balance(res.samples.double().mean(0, keepdim=True), obs)
        for name, value in chi2.items():
            variables[f"chi2_dof_{name}"] = (
                ("time",),
                np.array([value]),
                {"long_name": f"chi^2/dof of the ensemble mean against the {name} noise", "units": "1"},
            )
        variables["nfe"] = (
            ("time",),
            np.array([res.nfe]),
            {"long_name": "denoiser evaluations per ensemble member", "units": "1"},
        )
        variables["wall_time_s"] = (
            ("time",),
            np.array([res.wall_time_s]),
            {"long_name": "wall time of posterior sampling", "units": "s"},
        )
        clat, clon = coarse_coordinates(f.latitude, f.longitude, self.factor)
        levels = sorted({c.level for c in ch if c.level is not None}, reverse=True)
        coords: dict[str, Any] = {
            "time": ("time", f.times[i : i + 1]),
            "member": ("member", np.arange(samples.shape[0]), {"long_name": "ensemble member"}),
            "latitude": ("latitude", f.latitude, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": ("longitude", f.longitude, {"units": "degrees_east", "standard_name": "longitude"}),
            "coarse_latitude": ("coarse_latitude", np.asarray(clat), {"units": "degrees_north"}),
            "coarse_longitude": ("coarse_longitude", np.asarray(clon), {"units": "degrees_east"}),
            "station": ("station", np.arange(len(self.sites.latitude))),
            "station_latitude": ("station", self.sites.latitude, {"units": "degrees_north"}),
            "station_longitude": ("station", self.sites.longitude, {"units": "degrees_east"}),
            "held_out": (
                "station",
                self.sites.held_out.astype(np.int8),
                {"long_name": "1: left out of the conditioning (validation)"},
            ),
            "channel": ("channel", [c.name for c in ch]),
        }
        if levels:
            coords["level"] = ("level", np.array(levels), {"units": "hPa", "long_name": "pressure level"})
        ds = xr.Dataset(variables, coords=coords)
        ds["time"].encoding = {"units": "seconds since 1970-01-01", "dtype": "int64"}
        return ds

    def attrs(self) -> dict[str, Any]:
        """Store attributes."""
        obs = self.at["observations"]
        return {
            "stage": "atmos",
            "method": self.entry["name"],
            "method_plugins": self.method.name,
            "modalities": ",".join(self.modalities),
            "factor": self.factor,
            "coarse_noise_std": float(obs["coarse"]["noise_std"]),
            "station_noise_std": float(obs["stations"]["noise_std"]),
            "noise_units": "fraction of each variable's training std",
            "normalisation": json.dumps(self.norm.as_dict()),
            "channels": json.dumps([[c.variable, c.level] for c in self.fields.channels]),
        }

    def write(self, out: Path) -> Path:
        """The store, one block per evaluation time, resumable from its last completed time."""
        prov = sampling_provenance(
            self.record, self.prior, self.method, self.sampling, self.cfg["seed"], self.device
        )
        key = resume_key(self.record, self.method.as_dict(), self.sampling, self.prior.fingerprint())

        def block(i: int) -> xr.Dataset:
            ds = self.case(i)
            ds.attrs.update(self.attrs())
            return ds

        cases = [functools.partial(block, int(i)) for i in self.eval_idx]
        return write_resumable(cases, out, "time", key, prov, f"sample atmos {self.entry['name']}")


def sample(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv sample atmos``: ensembles of one method at every evaluation time."""
    job = SuperResolution(args, cfg, device)
    out = job.write(Path(args.output))
    print(f"wrote {out} ({len(job.eval_idx)} times, method {job.entry['name']})")


def calibrate(args: argparse.Namespace, cfg: dict[str, Any], device: str) -> None:
    """``diffinv calibrate atmos``: ensembles of one method at the ``atmos.calibration`` times
    (``--samples``), whose spread inflation and conformal intervals
    (:func:`diffinv.stages.atmos.calibrate.calibrate_stores`) are applied to ``--evaluation``."""
    from diffinv.stages.atmos.calibrate import calibrate_stores

    job = SuperResolution(args, cfg, device, calibration=True)
    samples = job.write(Path(args.samples))
    level = cfg["atmos"]["calibration"]["level"]
    table = calibrate_stores(samples, Path(args.evaluation), Path(args.output), Path(args.table), level)
    print(table.to_string(index=False))
    print(f"wrote {args.output} (calibrated on {len(job.eval_idx)} times of {samples})")
