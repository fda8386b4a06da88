"""Device check: diffinv's solver, guidance, search and training paths on CUDA against the CPU.

Four parts, each guarded (a failure prints a FAIL line with the exception and the script
goes on; the exit status is 1 if anything failed):

1. every registered solver: unconditional sampling with the trained prior from the same
   start noise on the CPU and on the device; finite?, max |Δ| and relative RMSE Δ of the
   samples (FAIL above ``REL_TOL``), time per step;
2. every registered guidance and search through the MRI stage
   (``diffinv.stages.mri.run.reconstruct_case``, as tests/search/test_mri_search.py, with
   the trained prior and the first eval slice under its configured 4x mask): finite?, PSNR
   of the posterior mean on the CPU and on the device (FAIL above ``PSNR_TOL`` dB for
   methods without a search; searches make discrete choices, so theirs is reported only),
   NFE per posterior sample (particle rows, population rows included);
3. per-step solver overhead on the device (``solvers_convergence.overhead``) at two batch sizes;
4. denoiser calls per second at three batch sizes (CPU and device) and prior-training
   steps per second on the device (``train_prior`` with the prior's own network and settings).

Writes device_check_{solvers,guidance,overhead,throughput}.csv under ``--out``.

    PYTHONPATH=src python benchmarks/device_check.py [--device cuda] [--quick] [--threads 8]
        [--prior results/mri/demo/prior] [--data results/mri/demo/data] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_csv
from solvers_convergence import SOLVERS, overhead, synchronize, timed
from torch import Tensor

from diffinv.complex import channels_to_complex
from diffinv.config import load_config, method_name, resolve_device
from diffinv.diffusion.denoisers import NetworkDenoiser
from diffinv.diffusion.networks import checkpoint_config, load_denoiser
from diffinv.diffusion.schedule import VPSchedule
from diffinv.diffusion.training import TrainConfig, train_prior
from diffinv.metrics import image_metrics
from diffinv.plugins import BUILTINS, load
from diffinv.solvers import PerSampleNoise, make_solver
from diffinv.solvers.base import integrate
from diffinv.stages.core import CaseSeeds, Method, Sampling
from diffinv.stages.mri.cases import MRICase, case_mask, load_cases, training_images
from diffinv.stages.mri.run import reconstruct_case
from diffinv.testbed import OWN_SOLVER, SMALL_SEARCH_OPTIONS

REL_TOL = 1e-2  # relative RMSE difference device vs CPU of a solver's samples (float32)
PSNR_TOL = 0.5  # dB, posterior-mean PSNR device vs CPU, methods without a search
# with their defaults these two diverge on the demo prior at 10 steps (PSNR -18 dB and 0 dB, measured),
# where device round-off is amplified without bound; stable settings (20.5 and 15.0 dB) make the
# comparison meaningful
STABLE_GUIDANCE_OPTIONS = {"gaussian_score": {"gamma": 1.0}, "pigdm": {"alpha_power": 1.0}}


@dataclass
class Sizes:
    """Problem sizes of one run (``--quick`` shrinks them)."""

    batch: int  # part 1
    steps: int  # parts 1 and 2
    samples: int  # part 2: posterior samples (one batch)
    overhead_batches: tuple[int, ...]
    overhead_nfe: int
    overhead_repeats: int
    throughput_batches: tuple[int, ...]
    min_time_s: float  # part 4: time each throughput figure for at least this long
    train_warmup: int
    train_steps: int
    calibration_size: int  # S3 / DC-Solver calibration batch and search size


FULL = Sizes(16, 10, 4, (16, 256), 20, 5, (1, 16, 256), 1.0, 10, 50, 16)
QUICK = Sizes(4, 5, 2, (1, 4), 6, 3, (1, 4, 16), 0.2, 2, 3, 4)


@dataclass
class Context:
    """What the parts share: settings, priors per device, and the failures and warnings so far."""

    args: argparse.Namespace
    sizes: Sizes
    device: str
    compare: bool  # run the CPU reference too
    priors: dict[str, NetworkDenoiser] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def devices(self) -> list[str]:
        """The devices of the throughput figures: the CPU first when compared."""
        return ["cpu", self.device] if self.compare and self.device != "cpu" else [self.device]

    @property
    def tf32(self) -> bool:
        """Whether parts 1-2 also run the device under PyTorch's default TF32 settings (CUDA, compared)."""
        return self.compare and torch.device(self.device).type == "cuda"

    def runs(
        self, what: str, fn: Callable[..., Any], plan: Callable[[Any], dict[str, Any]] | None = None
    ) -> tuple[Any, Any, Any, str]:
        """(device, cpu reference, device with TF32, note), each run guarded.

        The device run is in strict float32 (no TF32), as is the CPU. ``fn(device, **extra)``;
        ``plan(reference)`` gives options that reuse the reference's calibration: then the
        device's own calibration is run and described in the note, and the compared device
        runs reuse the CPU's calibration, so that only the kernels are compared.
        """
        ref = guarded(self, f"{what} on cpu (reference)", lambda: fn("cpu")) if self.compare else None
        with strict_fp32():
            main = guarded(self, f"{what} on {self.device}", lambda: fn(self.device))
        extra, note = (plan(ref) if plan and ref else {}), ""
        if main and extra:
            same = close(plan(main), extra)
            note = (
                f"own calibration ({'same' if same else 'different'} plan): "
                f"rel diff {rel_rmse(main['x'], ref['x']):.2e}; compared with the CPU's calibration"
            )
            with strict_fp32():
                again = guarded(
                    self,
                    f"{what} on {self.device} with the CPU's calibration",
                    lambda: fn(self.device, **extra),
                )
            main = (
                {**again, "prepare_s": main.get("prepare_s", math.nan)} if again else main
            )  # keep the own calibration's time
        alt = (
            guarded(self, f"{what} on {self.device} with TF32", lambda: fn(self.device, **extra))
            if self.tf32 and ref
            else None
        )
        return main, ref, alt, note

    def fail(self, what: str, message: str) -> None:
        line = f"FAIL  {what}: {message}"
        self.failures.append(line)
        print(line, flush=True)

    def warn(self, what: str, message: str) -> None:
        line = f"WARN  {what}: {message}"
        self.warnings.append(line)
        print(line, flush=True)


@contextmanager
def strict_fp32() -> Iterator[None]:
    """float32 without TF32 (cuDNN convolutions and matmuls), restoring the previous settings."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = conv
        torch.set_float32_matmul_precision(matmul)


def close(a: Any, b: Any, rel: float = 1e-6) -> bool:
    """Nested lists/dicts of numbers equal up to a relative tolerance."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(u, v, rel) for u, v in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    return a == b


def error_text(exc: BaseException) -> str:
    """The exception and where it was raised.

    The last three frames inside diffinv or this script, innermost first.
    """
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "diffinv" in f.filename or "benchmarks" in f.filename
    ]
    where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[::-1][:3])
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" + (
        f" at {where}" if where else ""
    )


def guarded(ctx: Context, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, or ``None`` after a FAIL line (with the traceback) if it raises."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, then the check goes on
        ctx.fail(what, error_text(exc))
        traceback.print_exc()
        return None


def prior(ctx: Context, device: str) -> NetworkDenoiser:
    """The trained prior on ``device`` (loaded once), warmed up with a few calls."""
    if device not in ctx.priors:
        D = load_denoiser(ctx.args.prior, device)
        size = tuple(checkpoint_config(ctx.args.prior)["network"]["size"])
        with torch.no_grad():
            for b in (1, ctx.sizes.batch):
                for _ in range(2):
                    D(torch.zeros((b, 2) + size, device=device), torch.full((b,), 0.5, dtype=torch.float64))
        synchronize()
        ctx.priors[device] = D
    return ctx.priors[device]


def image_shape(ctx: Context) -> tuple[int, int, int]:
    return (2,) + tuple(int(s) for s in checkpoint_config(ctx.args.prior)["network"]["size"])


def rel_rmse(a: Tensor, ref: Tensor) -> float:
    return float(
        (a.double() - ref.double()).pow(2).mean().sqrt() / ref.double().pow(2).mean().sqrt().clamp_min(1e-30)
    )


# -- part 1 ---------------------------------------------------------------------------
def solver_options(ctx: Context, name: str, D: NetworkDenoiser | None) -> dict[str, Any]:
    """Options per registered solver: T-Stitch gets the prior as its small model; solvers that calibrate
    in ``prepare`` (S3, DC-Solver, any other taking these options) get a small, fast calibration."""
    if name == "tstitch":
        return {"fraction": 0.4, "small": D}
    small = {
        "calibration_size": ctx.sizes.calibration_size,
        "reference_substeps": 2,
        "reference_steps": 8 * ctx.sizes.steps,
        "sweeps": 0,
        "blocks": 2,
        "warps": (1.0,),
    }
    accepted = inspect.signature(load("solver", name)).parameters
    return {k: v for k, v in small.items() if k in accepted}


def fitted(name: str, solver: Any, grid: Tensor) -> dict[str, Any]:
    """The calibrated parameters of S3 / DC-Solver / fitted_lms as options that reuse them.

    Empty for other solvers.
    """
    times = [float(t) for t in grid]
    if name == "s3":
        return {
            "plan": {"orders": list(solver.orders), "correctors": list(solver.correctors), "times": times}
        }
    if name == "dc_solver":
        return {"ratios": [float(r) for r in solver.ratios]}
    if name == "fitted_lms" and getattr(solver, "fitted", None) is not None:
        return {"fit": {"coefficients": solver.fitted, "times": times}}
    return {}


def run_solver(
    ctx: Context, name: str, device: str, x_T: Tensor, grid: Tensor, **extra: Any
) -> dict[str, Any]:
    """One unconditional sampling run of solver ``name`` on ``device``.

    Returns the samples (on the CPU), timings and fitted plan.
    """
    D = prior(ctx, device)
    solver = make_solver(name, D.schedule, **{**solver_options(ctx, name, D), **extra})
    noise = PerSampleNoise(range(x_T.shape[0]), device)
    x = x_T.to(device)
    with torch.no_grad():
        g, t_prep = timed(lambda: solver.prepare(D, grid, x))
        out, t_run = timed(lambda: integrate(solver, D, x, g, noise))
    out = out.cpu()
    steps = len(g) - 1
    return {
        "x": out,
        "finite": bool(torch.isfinite(out).all()),
        "ms_per_step": 1e3 * t_run / steps,
        "prepare_s": t_prep,
        "nfe": steps * solver.nfe_per_step,
        "fitted": fitted(name, solver, g),
    }


def check_solvers(ctx: Context) -> list[dict[str, Any]]:
    """Part 1: every registered solver, unconditional, same start noise on each device."""
    sz, rows = ctx.sizes, []
    sch = prior(ctx, ctx.device).schedule
    grid = sch.grid(sz.steps, "logsnr")
    x_T = torch.randn((sz.batch,) + image_shape(ctx), generator=torch.Generator().manual_seed(0)) * float(
        sch.sigma(grid[0])
    )
    print(
        f"\n== part 1: {len(BUILTINS['solver'])} solvers, batch {sz.batch}, {sz.steps} logsnr steps "
        f"on {ctx.device} (strict float32)"
        f"{' and cpu' if ctx.compare else ''}{', and on the device with TF32' if ctx.tf32 else ''}",
        flush=True,
    )
    for name in sorted(BUILTINS["solver"]):
        main, ref, alt, note = ctx.runs(
            f"solver {name}",
            lambda d, name=name, **extra: run_solver(ctx, name, d, x_T, grid, **extra),
            lambda r: r["fitted"],
        )
        row: dict[str, Any] = {
            "solver": name,
            "device": ctx.device,
            "nfe": main["nfe"] if main else None,
            "finite": main["finite"] if main else None,
            "ms_per_step": main["ms_per_step"] if main else math.nan,
            "prepare_s": main["prepare_s"] if main else math.nan,
            "cpu_finite": ref["finite"] if ref else None,
            "cpu_ms_per_step": ref["ms_per_step"] if ref else math.nan,
            "max_abs_diff": math.nan,
            "rel_rmse_diff": math.nan,
            "tf32_rel_rmse_diff": math.nan,
            "note": note,
        }
        status = "ok" if main and main["finite"] else "FAIL"
        if main and not main["finite"]:
            ctx.fail(f"solver {name} on {ctx.device}", "non-finite samples")
        if main and ref:
            row["max_abs_diff"] = float((main["x"] - ref["x"]).abs().max())
            row["rel_rmse_diff"] = rel_rmse(main["x"], ref["x"])
            if not row["rel_rmse_diff"] <= REL_TOL:
                status = "FAIL"
                ctx.fail(
                    f"solver {name}",
                    f"{ctx.device} vs cpu relative RMSE difference {row['rel_rmse_diff']:.3e} > {REL_TOL:g}",
                )
        if alt and ref:
            row["tf32_rel_rmse_diff"] = rel_rmse(alt["x"], ref["x"])
            if not row["tf32_rel_rmse_diff"] <= REL_TOL:
                ctx.warn(
                    f"solver {name}",
                    f"with TF32 (PyTorch's default for convolutions) {ctx.device} vs cpu relative RMSE "
                    f"difference {row['tf32_rel_rmse_diff']:.3e} > {REL_TOL:g}",
                )
        row["status"] = status
        rows.append(row)
        cmp = (
            f"  cpu {row['cpu_ms_per_step']:7.2f} ms/step  max|Δ| {row['max_abs_diff']:.2e}  "
            f"rel {row['rel_rmse_diff']:.2e}"
            if ctx.compare
            else ""
        )
        cmp += f"  tf32 rel {row['tf32_rel_rmse_diff']:.2e}" if ctx.tf32 else ""
        print(
            f"  {name:<10} nfe {row['nfe']!s:>3}  finite {row['finite']!s:<5} "
            f"{row['ms_per_step']:7.2f} ms/step  prepare {row['prepare_s']:6.2f} s{cmp}  {status}"
            + (f"  [{note}]" if note else ""),
            flush=True,
        )
    return rows


# -- part 2 ---------------------------------------------------------------------------
def demo_case(ctx: Context) -> tuple[MRICase, float, dict[str, Any], dict[str, dict[str, Any]]]:
    """The first slice of eval.zarr, the centre fraction, the validated ``mri.sampling`` section and the
    demo methods' guidance options."""
    cfg = load_config(ctx.args.config)
    mri = cfg["mri"]
    center = float(mri["data"]["center_fraction"])
    case = load_cases(ctx.args.data / "eval.zarr", center, limit=1)[0]
    if case.truth is None:
        raise RuntimeError(f"{case.label}: not fully sampled, no ground truth for PSNR")
    options: dict[str, dict[str, Any]] = {}
    for m in mri["sampling"]["methods"]:
        options.setdefault(m["guidance"], dict(m.get("guidance_options", {})))
    return case, center, mri["sampling"], options


def check_guidance(ctx: Context) -> list[dict[str, Any]]:
    """Part 2: every registered guidance and search through ``reconstruct_case`` on each device."""
    sz, rows = ctx.sizes, []
    case, center, section, gopts = demo_case(ctx)
    truth = channels_to_complex(case.truth).numpy()
    mask_kind = section["mask"]["kind"]
    mask = case_mask(case, 4, mask_kind, center, CaseSeeds.of(0, case.label))
    sampling = Sampling.from_config(
        section,
        steps=sz.steps,
        grid="logsnr",
        samples=sz.samples,
        batch_size=sz.samples,
        hallucination_steps=2,
        final_dc=False,
        precision="fp32",  # the comparison is of strict float32 runs
    )
    methods = [
        {
            "solver": OWN_SOLVER.get(g, "ddim"),
            "guidance": g,
            "guidance_options": {**STABLE_GUIDANCE_OPTIONS.get(g, {}), **gopts.get(g, {})},
        }
        for g in sorted(BUILTINS["guidance"])
    ]
    methods += [
        {
            "solver": "ddpm",
            "guidance": "none" if s == "mcgdiff" else "dds",
            "guidance_options": {} if s == "mcgdiff" else gopts.get("dds", {}),
            "search": s,
            "search_options": SMALL_SEARCH_OPTIONS.get(s, {}),
        }
        for s in sorted(BUILTINS["search"])
    ]
    print(
        f"\n== part 2: {len(methods)} methods on {case.label}, 4x {mask_kind}, {sz.samples} samples, "
        f"{sz.steps} steps on {ctx.device} (strict float32)"
        f"{' and cpu' if ctx.compare else ''}{', and on the device with TF32' if ctx.tf32 else ''}",
        flush=True,
    )

    def one(method: dict[str, Any], device: str) -> dict[str, Any]:
        out = reconstruct_case(
            case, prior(ctx, device), mask, Method.from_config(method), sampling, 0, device
        )
        x = out.samples
        finite = bool(torch.isfinite(x).all())
        psnr = image_metrics(truth, channels_to_complex(x).mean(0).numpy())["psnr"] if finite else math.nan
        return {
            "finite": finite,
            "psnr": psnr,
            "nfe_per_sample": out.nfe,
            "wall_s": out.wall_time_s,
            "mean": x.mean(0),
        }

    for method in methods:
        name = method_name(method)
        main, ref, alt, _ = ctx.runs(name, lambda d, method=method: one(method, d))
        deterministic = not method.get("search")
        row = {
            "method": name,
            "kind": "search" if method.get("search") else "guidance",
            "device": ctx.device,
            "options": str({k: v for k, v in method.items() if k.endswith("_options") and v}),
            "finite": main["finite"] if main else None,
            "psnr": main["psnr"] if main else math.nan,
            "nfe_per_sample": main["nfe_per_sample"] if main else None,
            "wall_s": main["wall_s"] if main else math.nan,
            "cpu_finite": ref["finite"] if ref else None,
            "cpu_psnr": ref["psnr"] if ref else math.nan,
            "cpu_wall_s": ref["wall_s"] if ref else math.nan,
            "psnr_diff_db": math.nan,
            "mean_rel_diff": math.nan,
            "tf32_psnr_diff_db": math.nan,
            "tf32_mean_rel_diff": math.nan,
        }
        status = "ok" if main and main["finite"] else "FAIL"
        if main and not main["finite"]:
            ctx.fail(f"{name} on {ctx.device}", "non-finite samples")
        if main and ref:
            row["psnr_diff_db"] = main["psnr"] - ref["psnr"]
            row["mean_rel_diff"] = rel_rmse(main["mean"], ref["mean"])
            if not abs(row["psnr_diff_db"]) <= PSNR_TOL:
                if deterministic:
                    status = "FAIL"
                    ctx.fail(
                        name,
                        f"PSNR {main['psnr']:.2f} dB on {ctx.device} vs {ref['psnr']:.2f} dB on cpu "
                        f"(> {PSNR_TOL} dB apart)",
                    )
                else:
                    status = "differs (search)"
        if alt and ref:
            row["tf32_psnr_diff_db"] = alt["psnr"] - ref["psnr"]
            row["tf32_mean_rel_diff"] = rel_rmse(alt["mean"], ref["mean"])
            if deterministic and not abs(row["tf32_psnr_diff_db"]) <= PSNR_TOL:
                ctx.warn(
                    name,
                    f"with TF32 PSNR {alt['psnr']:.2f} dB on {ctx.device} vs {ref['psnr']:.2f} dB on cpu "
                    f"(> {PSNR_TOL} dB apart)",
                )
        row["status"] = status
        rows.append(row)
        cmp = (
            f"  cpu {row['cpu_psnr']:6.2f} dB  Δ {row['psnr_diff_db']:+.3f} dB  "
            f"mean rel Δ {row['mean_rel_diff']:.2e}  cpu {row['cpu_wall_s']:6.2f} s"
            if ctx.compare
            else ""
        )
        cmp += f"  tf32 Δ {row['tf32_psnr_diff_db']:+.3f} dB" if ctx.tf32 else ""
        print(
            f"  {name:<24} finite {row['finite']!s:<5} PSNR {row['psnr']:6.2f} dB  {row['wall_s']:6.2f} s  "
            f"nfe/sample {row['nfe_per_sample']!s:>5}{cmp}  {status}",
            flush=True,
        )
    return rows


# -- part 3 ---------------------------------------------------------------------------
def overhead_solvers(ctx: Context) -> dict[str, tuple[str, dict[str, Any]]]:
    """The benchmark's solver list with small calibrations.

    S3 and DC-Solver searches are one-offs, excluded from the ratio.
    """
    out = dict(SOLVERS)
    for name in ("s3", "dc_solver"):
        out[name] = (name, {**SOLVERS[name][1], **solver_options(ctx, name, None)})
    return out


def check_overhead(ctx: Context) -> list[dict[str, Any]]:
    """Part 3: whole-run time over bare denoiser calls per solver on the device.

    See ``solvers_convergence.overhead``.
    """
    sz, rows = ctx.sizes, []
    D = prior(ctx, ctx.device)
    print(
        f"\n== part 3: per-step overhead on {ctx.device}, batches {sz.overhead_batches}, "
        f"{sz.overhead_nfe} NFE, median of {sz.overhead_repeats}",
        flush=True,
    )
    for batch in sz.overhead_batches:
        x = (
            torch.randn((batch,) + image_shape(ctx), generator=torch.Generator().manual_seed(0))
            * float(D.schedule.sigma(D.schedule.t_max))
        ).to(ctx.device)
        for name, spec in overhead_solvers(ctx).items():
            got = guarded(
                ctx,
                f"overhead {name} batch {batch}",
                lambda x=x, name=name, spec=spec: overhead(
                    D, x, sz.overhead_nfe, sz.overhead_repeats, {name: spec}
                ),
            )
            for r in got or []:
                rows.append({"device": ctx.device, "batch": batch, **r})
    return rows


# -- part 4 ---------------------------------------------------------------------------
def calls_per_second(ctx: Context, device: str, batch: int) -> dict[str, Any]:
    """Denoiser calls per second at ``batch`` (no grad).

    Timed for at least ``min_time_s`` after two warm-up calls.
    """
    D = prior(ctx, device)
    x = torch.randn((batch,) + image_shape(ctx), generator=torch.Generator().manual_seed(0)).to(device)
    t = torch.full((batch,), 0.5, dtype=torch.float64)
    n, elapsed = 0, 0.0
    with torch.no_grad():
        for _ in range(2):
            D(x, t)
        synchronize()
        start = time.perf_counter()
        while elapsed < ctx.sizes.min_time_s and n < 2000:
            D(x, t)
            n += 1
            if n in (1, 2, 4) or n % 8 == 0:
                synchronize()
                elapsed = time.perf_counter() - start
        synchronize()
        elapsed = time.perf_counter() - start
    return {
        "what": "denoiser",
        "device": device,
        "batch": batch,
        "per_s": n / elapsed,
        "ms_each": 1e3 * elapsed / n,
        "samples_per_s": n * batch / elapsed,
        "count": n,
    }


def training_rate(ctx: Context, device: str) -> dict[str, Any]:
    """Prior-training steps per second on ``device``: ``train_prior`` with the prior's network and settings.

    Runs W steps (warm-up), W steps and W + N steps; the rate is N over the difference of
    the last two wall times, so the checkpoint and loss-curve writing cancel.
    """
    sz, cfg = ctx.sizes, checkpoint_config(ctx.args.prior)
    images = training_images(
        ctx.args.data / "train.zarr", float(load_config(ctx.args.config)["mri"]["data"]["center_fraction"])
    )
    known = {f.name for f in fields(TrainConfig)}
    base = {k: v for k, v in cfg.get("training", {}).items() if k in known}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, steps in enumerate((sz.train_warmup, sz.train_warmup, sz.train_warmup + sz.train_steps)):
            train = TrainConfig(**{**base, "steps": steps, "warmup": min(base.get("warmup", 100), steps)})
            folder = Path(tmp) / f"p{i}"
            _, wall = timed(
                lambda folder=folder, train=train: train_prior(
                    images,
                    folder,
                    cfg["network"],
                    VPSchedule(**cfg["schedule"]),
                    train,
                    cfg.get("clip"),
                    {},
                    device,
                    progress=False,
                )
            )
            times.append(wall)
    diff = times[2] - times[1]
    rate = sz.train_steps / diff if diff > 0 else (sz.train_warmup + sz.train_steps) / times[2]
    bs = base.get("batch_size", TrainConfig.batch_size)
    return {
        "what": f"train_prior (batch {bs})",
        "device": device,
        "batch": bs,
        "per_s": rate,
        "ms_each": 1e3 / rate,
        "samples_per_s": rate * bs,
        "count": sz.train_steps,
    }


def check_throughput(ctx: Context) -> list[dict[str, Any]]:
    """Part 4: denoiser calls/s on each device at each batch, and training steps/s on the device."""
    rows = []
    print(
        f"\n== part 4: throughput, batches {ctx.sizes.throughput_batches}, devices {ctx.devices}", flush=True
    )
    for device in ctx.devices:
        for batch in ctx.sizes.throughput_batches:
            r = guarded(
                ctx,
                f"denoiser throughput {device} batch {batch}",
                lambda device=device, batch=batch: calls_per_second(ctx, device, batch),
            )
            if r:
                rows.append(r)
                print(
                    f"  denoiser {device:<6} batch {batch:>4}: {r['per_s']:9.1f} calls/s  "
                    f"{r['ms_each']:8.2f} ms/call  {r['samples_per_s']:10.0f} samples/s",
                    flush=True,
                )
    r = guarded(ctx, f"training throughput {ctx.device}", lambda: training_rate(ctx, ctx.device))
    if r:
        rows.append(r)
        print(
            f"  {r['what']} on {ctx.device}: {r['per_s']:.2f} steps/s ({r['ms_each']:.1f} ms/step)",
            flush=True,
        )
    return rows


# -- summary --------------------------------------------------------------------------
def fmt(v: Any) -> str:
    if isinstance(v, float):
        return (
            "nan"
            if math.isnan(v)
            else (f"{v:.3e}" if v != 0 and (abs(v) < 1e-2 or abs(v) >= 1e5) else f"{v:.3f}")
        )
    return "" if v is None else str(v)


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    print(f"\n{title}")
    columns = [
        c for c in columns if any(fmt(r.get(c)) not in ("", "nan") for r in rows)
    ]  # drop columns with nothing in them
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)))


SUMMARY = {
    "solvers": [
        "solver",
        "nfe",
        "finite",
        "ms_per_step",
        "cpu_ms_per_step",
        "prepare_s",
        "max_abs_diff",
        "rel_rmse_diff",
        "tf32_rel_rmse_diff",
        "status",
        "note",
    ],
    "guidance": [
        "method",
        "finite",
        "psnr",
        "cpu_psnr",
        "psnr_diff_db",
        "mean_rel_diff",
        "tf32_psnr_diff_db",
        "nfe_per_sample",
        "wall_s",
        "cpu_wall_s",
        "status",
    ],
    "overhead": ["batch", "solver", "calls", "run_s", "bare_calls_s", "ratio", "prepare_s"],
    "throughput": ["what", "device", "batch", "per_s", "ms_each", "samples_per_s"],
}


def environment(ctx: Context) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    lines = [
        f"python {sys.version.split()[0]}  torch {torch.__version__}  numpy {np.__version__}  "
        f"diffusers {ver('diffusers')}  zarr {ver('zarr')}  threads {torch.get_num_threads()}"
    ]
    if torch.cuda.is_available():
        lines.append(
            f"cuda {torch.version.cuda}  {torch.cuda.get_device_name()}  "
            f"cudnn {torch.backends.cudnn.version()}  "
            f"tf32 conv {torch.backends.cudnn.allow_tf32} matmul {torch.backends.cuda.matmul.allow_tf32}"
        )
    lines.append(
        f"device {ctx.device}  compared with cpu: {ctx.compare}  prior {ctx.args.prior}  "
        f"data {ctx.args.data}  sizes {ctx.sizes}"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda when available, else cpu")
    ap.add_argument(
        "--compare-cpu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run parts 1, 2 and 4 on the CPU as the reference (default: on unless --device cpu)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="tiny sizes (batch 4, 5 steps), for a CPU smoke test"
    )
    ap.add_argument("--prior", type=Path, default=Path("results/mri/demo/prior"))
    ap.add_argument(
        "--data",
        type=Path,
        default=Path("results/mri/demo/data"),
        help="folder with train.zarr and eval.zarr",
    )
    ap.add_argument(
        "--config",
        type=Path,
        default=Path("config/config.yaml"),
        help="for the centre fraction, mask kind and guidance options",
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--parts", type=int, nargs="+", default=[1, 2, 3, 4], choices=[1, 2, 3, 4])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device or "auto")
    compare = device != "cpu" if args.compare_cpu is None else args.compare_cpu
    ctx = Context(args, QUICK if args.quick else FULL, device, compare)
    print(environment(ctx), flush=True)
    start = time.perf_counter()
    parts = {
        1: ("solvers", check_solvers),
        2: ("guidance", check_guidance),
        3: ("overhead", check_overhead),
        4: ("throughput", check_throughput),
    }
    for p in args.parts:
        key, fn = parts[p]
        t0 = time.perf_counter()
        rows = guarded(ctx, f"part {p} ({key})", lambda fn=fn: fn(ctx))
        print(f"-- part {p} took {time.perf_counter() - t0:.1f} s", flush=True)
        if rows:
            ctx.tables[key] = rows
            write_csv(
                args.out / f"device_check_{key}.csv",
                [{k: v for k, v in r.items() if not isinstance(v, Tensor)} for r in rows],
            )

    print(
        f"\n==== summary ({device}{' vs cpu' if ctx.compare else ''}, "
        f"{time.perf_counter() - start:.0f} s) ===="
    )
    for key, rows in ctx.tables.items():
        print_table(key, rows, SUMMARY[key])
    print(f"\nwrote {', '.join(f'device_check_{k}.csv' for k in ctx.tables)} under {args.out}")
    if ctx.warnings:
        print(f"\n{len(ctx.warnings)} warning(s) (not failures):")
        for line in ctx.warnings:
            print("  " + line)
    if ctx.failures:
        print(f"\n{len(ctx.failures)} FAILURE(S):")
        for line in ctx.failures:
            print("  " + line)
        return 1
    print("\nALL OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
