"""3D CT stage: quality against NFE for the reference and fast variants, and time and peak memory
per volume against depth.

``quality``: runs the config's ``ct3d.sampling.methods`` through the stage
(:class:`diffinv.stages.ct3d.run.Reconstruction`) on its evaluation volumes for every task, the
``--reference`` method (default ``mbir``) over ``--reference-steps`` and the others over
``--fast-steps``, and writes PSNR/SSIM per view, NFE, 2D network evaluations and wall time
(out/ct3d_quality.csv, .png). Needs the ingested store and a trained prior (``make demo``).

``scale``: for each depth, writes a demo scan of that many slices, and runs the config's
``fast`` method (one sample) on one volume in a fresh process, recording the wall time and the process's peak
resident memory (CPU) or peak CUDA memory (out/ct3d_scale.csv). With ``--prior none`` an
untrained network of the config's architecture stands in (timing only).

``sweep``: variants of the config's ``fast`` method (``VARIANTS``: solver, η/ζ, time grid, λ, ρ, CG
steps, ADMM iterations per step, samples, start time and initial estimate; none with more NFE than
``fast``; a variant with a ``method`` patches that method instead, e.g. ``slicewise(cg=3)``,
``mbir(cg=2,lam=2,rho=10)``), each as run for the task (its ``ct3d.tasks[].methods`` overrides
merged first), on tuning volumes of the store that are neither training nor evaluation volumes
(``--tune-volume``, default the first volume after them; a bigger demo store gives more, e.g.
``diffinv demo-data ct --set=volumes=30``), against the ``--reference`` method on the same volume
(run once per volume, its figures cached in out/ct3d_sweep/reference.csv); then the ``--confirm``
variants (e.g. ``fast`` and the chosen one) on the evaluation volumes, against the reference's demo
store when it holds them (else run). Writes PSNR per view, the gap to the reference per view, NFE
and sampling wall time (out/ct3d_sweep/sweep.csv, keeping the rows of earlier runs that this one
does not repeat, so ``--tasks``, ``--variants`` and ``--confirm`` split a sweep into short runs),
and per variant the gap averaged over the volumes with its standard error (summary.csv, gap.png). A
variant's ``grid``, ``t_start`` and ``init`` are that method's alone, not the section's.

Run: PYTHONPATH=src python benchmarks/ct3d.py quality|scale|sweep [--root DIR] [--threads N] ...
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import write_csv

from diffinv.config import load_config
from diffinv.stages import verb_config

OUT = Path(__file__).parent / "out"


def _job(cfg: dict[str, Any], entry: dict[str, Any], store: Path, prior: Path, task: str, device: str) -> Any:
    from diffinv.stages.ct3d.run import Reconstruction

    cfg = copy.deepcopy(cfg)
    cfg["ct3d"]["sampling"]["methods"] = [entry]
    for t in cfg["ct3d"]["tasks"]:  # ``entry`` is already the task's (``_entry``)
        t.pop("methods", None)
    job_cfg = verb_config(cfg, "ct3d", "sample", entry["name"])
    args = argparse.Namespace(data=str(store), prior=str(prior), task=task)
    return Reconstruction(args, job_cfg, device)


def _entry(cfg: dict[str, Any], task: str, name: str) -> dict[str, Any]:
    """Method ``name`` of the config as run for ``task`` (its ``ct3d.tasks[].methods`` overrides merged)."""
    from diffinv.stages.ct3d import task_method

    (entry,) = [t for t in cfg["ct3d"]["tasks"] if t["name"] == task]
    return task_method(entry, next(m for m in cfg["ct3d"]["sampling"]["methods"] if m["name"] == name))


def quality(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    """PSNR/SSIM per view against NFE for the config's methods (``--reference`` over
    ``--reference-steps``, the others over ``--fast-steps``), every task of the config."""
    from diffinv.stages.ct3d.evaluate import VIEWS, view_metrics

    rows = []
    methods = cfg["ct3d"]["sampling"]["methods"]
    for task in [t["name"] for t in cfg["ct3d"]["tasks"]]:
        for method in methods:
            steps_list = a.reference_steps if method["name"] == a.reference else a.fast_steps
            for steps in steps_list:
                entry = {**_entry(cfg, task, method["name"]), "steps": steps}
                job = _job(cfg, entry, a.store, a.prior, task, a.device)
                for bounds in job.store.eval_bounds:
                    start = time.perf_counter()
                    ds = job.case(job.store.volume(bounds))
                    ref, mean = ds["reference"].values[0], ds["mean"].values[0]
                    row = {"task": task, "variant": method["name"], "steps": steps}
                    row.update(samples=job.sampling.samples, volume=str(ds["volume"].values[0]))
                    row.update(
                        nfe=float(ds["nfe"].values[0]),
                        slice_evaluations=float(ds["slice_evaluations"].values[0]),
                    )
                    row["wall_time_s"] = round(time.perf_counter() - start, 2)
                    for view, axis in VIEWS.items():
                        m = view_metrics(ref, mean, axis)
                        row[f"psnr_{view}"], row[f"ssim_{view}"] = round(m["psnr"], 3), round(m["ssim"], 4)
                    for base in ("fbp", "tv"):
                        row[f"psnr_coronal_{base}"] = round(
                            view_metrics(ref, ds[base].values[0], 1)["psnr"], 3
                        )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    write_csv(a.out / "ct3d_quality.csv", rows)
    _plot_quality(rows, a.out / "ct3d_quality.png")


def _plot_quality(rows: list[dict[str, Any]], path: Path) -> None:
    from diffinv.plots import plt

    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.2), dpi=110, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for variant, marker in zip(sorted({r["variant"] for r in rows}), "osd^v"):
            pts = sorted(
                {
                    r["nfe"]: [
                        x["psnr_coronal"]
                        for x in rows
                        if x["task"] == task and x["variant"] == variant and x["nfe"] == r["nfe"]
                    ]
                    for r in rows
                    if r["task"] == task and r["variant"] == variant
                }.items()
            )
            ax.plot([p for p, _ in pts], [sum(v) / len(v) for _, v in pts], marker=marker, label=variant)
        ax.set_xscale("log")
        ax.set_xlabel("NFE (volume denoiser evaluations per sample)")
        ax.set_ylabel("coronal PSNR of the mean (dB)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path)


def scale(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    """Wall time and peak memory of one fast sample of one volume, against depth."""
    rows = []
    for depth in a.depths:
        cmd = [sys.executable, __file__, "_one", "--depth", str(depth), "--size", str(a.size)]
        cmd += [
            "--config",
            str(a.config),
            "--prior",
            str(a.prior),
            "--device",
            a.device,
            "--threads",
            str(a.threads),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    write_csv(a.out / "ct3d_scale.csv", rows)


def _one(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    """One volume of ``--depth`` slices in this process; prints a JSON row."""
    import resource

    from diffinv.demo.ct import write_demo
    from diffinv.io.ct import ingest

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_demo(root / "demo", 0, volumes=2, slices=a.depth, size=a.size, angles=90)
        ingest([root / "demo"], root / "ct.zarr")
        cfg = copy.deepcopy(cfg)
        cfg["ct3d"]["data"].update(volume_slices=a.depth, train_volumes=1, eval_volumes=1, rows=None)
        cfg["ct3d"]["data"].update(reference="truth", train_on="truth")
        cfg["ct3d"]["baselines"]["tv"]["lambdas"] = [0.1]
        prior = a.prior if str(a.prior) != "none" else _untrained(cfg, root, a.size)
        task = cfg["ct3d"]["tasks"][0]["name"]
        entry = {**_entry(cfg, task, "fast"), "samples": 1}
        cfg["ct3d"]["sampling"]["batch_size"] = 1
        job = _job(cfg, entry, root / "ct.zarr", prior, task, a.device)
        if a.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        ds = job.case(job.store.volume(job.store.eval_bounds[0]))
        wall = time.perf_counter() - start
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if a.device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        row = {"depth": a.depth, "size": a.size, "device": a.device, "threads": a.threads}
        row.update(wall_time_s=round(wall, 2), sampling_s=round(float(ds["wall_time_s"].values[0]), 2))
        row.update(
            peak_mib=round(peak, 1),
            memory="cuda peak allocated" if a.device.startswith("cuda") else "max RSS",
        )
        row["slice_batch"] = cfg["ct3d"]["sampling"]["slice_batch"]
        print(json.dumps(row))


# Variants of the config's ``fast`` entry: a patch replaces ``solver`` and ``solver_options`` and
# updates ``guidance_options``; ``grid`` is the method's own time grid. All keep its 10 steps.
_TU_DIFFPIR: dict[str, Any] = {"grid": "time_uniform", "solver": "diffpir", "solver_options": {"zeta": 1.0}}
VARIANTS: dict[str, dict[str, Any]] = {
    "fast": {},
    "cg_steps=1": {"guidance_options": {"cg_steps": 1}},
    "cg_steps=6": {"guidance_options": {"cg_steps": 6}},
    "admm_iters=2": {"guidance_options": {"admm_iters": 2}},
    "admm_iters=4": {"guidance_options": {"admm_iters": 4}},
    "lam=0.3": {"guidance_options": {"lam": 0.3}},
    "lam=1": {"guidance_options": {"lam": 1.0}},
    "rho=0.3": {"guidance_options": {"rho": 0.3}},
    "rho=3": {"guidance_options": {"rho": 3.0}},
    "eta=0": {"solver_options": {"eta": 0.0}},
    "eta=1": {"solver_options": {"eta": 1.0}},
    "samples=8": {"samples": 8},
    "dpmpp_2m": {"solver": "dpmpp_2m", "solver_options": {}},
    "diffpir(zeta=1)": {"solver": "diffpir", "solver_options": {"zeta": 1.0}},
    "grid=karras": {"grid": "karras"},
    "grid=time_uniform": {"grid": "time_uniform"},
    "grid=time_uniform,eta=1": {"grid": "time_uniform", "solver_options": {"eta": 1.0}},
    "grid=time_uniform,diffpir(zeta=1)": _TU_DIFFPIR,
    "grid=time_uniform,diffpir(zeta=0.7)": {**_TU_DIFFPIR, "solver_options": {"zeta": 0.7}},
    "grid=time_uniform,diffpir(zeta=1),cg_steps=2": {**_TU_DIFFPIR, "guidance_options": {"cg_steps": 2}},
    "grid=time_uniform,diffpir(zeta=1),cg_steps=4": {**_TU_DIFFPIR, "guidance_options": {"cg_steps": 4}},
    "grid=time_uniform,diffpir(zeta=1),cg_steps=2,lam=0.3": {
        **_TU_DIFFPIR,
        "guidance_options": {"cg_steps": 2, "lam": 0.3},
    },
}


def _dc(method: str = "fast", dims: list[int] | None = None, **options: float) -> dict[str, Any]:
    """A patch of ``method``'s data consistency: ``cg_steps``, ``lam``, ``rho`` (and ``dims``)."""
    opts = {"cg_steps" if k == "cg" else k: v for k, v in options.items()}
    return {"method": method, "guidance_options": opts | ({"dims": dims} if dims else {})}


# Per-task data consistency (the wedge against sparse views): options set explicitly, so a row
# means the same whatever the config's ``ct3d.tasks[].methods`` overrides; ``method`` picks the base.
VARIANTS.update(
    {
        f"{m}(cg={cg},lam={lam:g},rho={rho:g})": _dc(m, cg=cg, lam=lam, rho=rho)
        for m, cg, lam, rho in [
            ("fast", 2, 0.5, 1.0),
            ("fast", 2, 0.5, 2.0),
            ("fast", 2, 0.5, 10.0),
            ("fast", 3, 0.5, 1.0),
            ("fast", 3, 0.1, 1.0),
            ("fast", 3, 2.0, 1.0),
            ("fast", 3, 2.0, 3.0),
            ("fast", 3, 1.0, 10.0),
            ("fast", 3, 2.0, 10.0),
            ("fast", 3, 5.0, 10.0),
            ("fast", 3, 2.0, 30.0),
            ("fast", 3, 2.0, 5.0),
            ("fast", 4, 1.0, 5.0),
            ("fast", 4, 2.0, 5.0),
            ("fast", 4, 3.0, 5.0),
            ("fast", 4, 2.0, 10.0),
            ("fast", 5, 2.0, 10.0),
            ("mbir", 1, 0.3, 1.0),
            ("mbir", 1, 2.0, 10.0),
            ("mbir", 2, 2.0, 10.0),
            ("mbir", 3, 2.0, 10.0),
            ("mbir", 2, 1.0, 5.0),
            ("mbir", 3, 1.0, 5.0),
        ]
    }
)
VARIANTS.update({f"slicewise(cg={cg})": _dc("slicewise", cg=cg) for cg in (2, 3, 4, 5)})
# Later grid starts (``t_start``, Sampling): the same 10 steps between t_start and t_min.
STARTS = (0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
VARIANTS.update({f"t_start={t:g}": {"t_start": t} for t in STARTS})
# the data consistency around each task's options at a later start (t_start, cg, lam, rho)
VARIANTS.update(
    {
        f"t_start={t:g},cg={cg},lam={lam:g},rho={rho:g}": {"t_start": t} | _dc(cg=cg, lam=lam, rho=rho)
        for t, cg, lam, rho in [
            *[(0.6, 3, 2.0, 5.0), (0.6, 5, 2.0, 5.0), (0.6, 4, 1.0, 5.0), (0.6, 4, 3.0, 5.0)],
            *[(0.6, 4, 2.0, 3.0), (0.6, 4, 2.0, 10.0), (0.6, 2, 2.0, 5.0), (0.6, 3, 1.0, 5.0)],
            *[(0.6, 3, 2.0, 3.0), (0.6, 3, 2.0, 10.0), (0.6, 3, 1.0, 3.0), (0.6, 3, 0.5, 5.0)],
            *[(0.6, 3, 1.0, 10.0), (0.6, 2, 1.0, 5.0)],
            *[(0.3, 1, 0.5, 1.0), (0.3, 3, 0.5, 1.0), (0.3, 2, 0.3, 1.0), (0.3, 2, 1.0, 1.0)],
            *[(0.3, 2, 0.5, 2.0), (0.3, 2, 0.5, 0.5)],
        ]
    }
)
# around the wedge's choice (from t 0.6, 3 CG steps, λ 1, ρ 5): start, renoising, ADMM iterations, TV axes
_LA90_DC: dict[str, Any] = {"cg": 3, "lam": 1.0, "rho": 5.0}
_LA90 = {"t_start": 0.6} | _dc(**_LA90_DC)
VARIANTS.update(
    {
        "la90:t_start=0.7": _LA90 | {"t_start": 0.7},
        "la90:t_start=0.5": _LA90 | {"t_start": 0.5},
        "la90:zeta=0.7": _LA90 | {"solver_options": {"zeta": 0.7}},
        "la90:zeta=0.5": _LA90 | {"solver_options": {"zeta": 0.5}},
        "la90:admm_iters=2": _LA90 | _dc(**_LA90_DC, admm_iters=2),
        "la90:dims=1": _LA90 | _dc(dims=[1], **_LA90_DC),
    }
)
# CCDF's start from a cheap reconstruction: the task's TV (or FBP) baseline diffused to t_start
VARIANTS.update(
    {
        f"la90:init=tv,t_start={t:g}": _LA90 | {"t_start": t, "init": "tv"}
        for t in (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)
    }
)
VARIANTS["la90:init=fbp"] = _LA90 | {"init": "fbp"}
VARIANTS.update({f"init=tv,t_start={t:g}": {"t_start": t, "init": "tv"} for t in (0.2, 0.3, 0.4)})
VARIANTS.update(
    {
        f"slicewise(init=tv,t_start={t:g})": {"method": "slicewise", "t_start": t, "init": "tv"}
        for t in (0.4, 0.5, 0.6)
    }
)
# the split variable re-formed from each step's estimate (admm_tv carry_split), as mri3d needs
VARIANTS["carry_split=false"] = {"guidance_options": {"carry_split": False}}
VARIANTS["slicewise"] = {"method": "slicewise"}
VARIANTS["mbir(t_start=0.6)"] = {"method": "mbir", "t_start": 0.6}
VARIANTS.update({f"slicewise(t_start={t:g})": {"method": "slicewise", "t_start": t} for t in STARTS})
VARIANTS.update(
    {
        f"slicewise(t_start={t:g},cg={cg})": {"t_start": t} | _dc("slicewise", cg=cg)
        for t, cg in [(0.5, 1), (0.5, 3), (0.6, 2), (0.6, 4)]
    }
)
VARIANTS.update(
    {
        f"fast(cg=3,lam=2,rho=10,dims={','.join(map(str, d))})": _dc("fast", dims=d, cg=3, lam=2.0, rho=10.0)
        for d in ([1], [2, 3])
    }
)


def _variant(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """The ``base`` entry (the task's ``fast``, or the patch's ``method``) with ``patch`` applied
    (see ``VARIANTS``)."""
    patch = {k: v for k, v in copy.deepcopy(patch).items() if k != "method"}
    entry = {**copy.deepcopy(base), **patch}
    entry["guidance_options"] = {**base["guidance_options"], **patch.get("guidance_options", {})}
    return entry


def _psnr_views(job: Any, volume: Any) -> dict[str, Any]:
    """PSNR per view of the posterior mean of ``job`` (one method) on one volume, NFE, sampling time."""
    from diffinv.stages.ct3d.evaluate import VIEWS, view_metrics

    ds = job.case(volume)
    ref, mean = ds["reference"].values[0], ds["mean"].values[0]
    row: dict[str, Any] = {
        f"psnr_{v}": round(view_metrics(ref, mean, ax)["psnr"], 3) for v, ax in VIEWS.items()
    }
    row.update(nfe=float(ds["nfe"].values[0]), samples=job.sampling.samples, grid=job.sampling.grid)
    row["t_start"] = job.sampling.t_start
    row["sampling_s"] = round(float(ds["wall_time_s"].values[0]), 2)
    return row


def _stored_reference(
    a: argparse.Namespace, task: str, entry: dict[str, Any], label: str
) -> dict[str, Any] | None:
    """PSNR per view of the reference's demo store for volume ``label``, if it holds it and was
    sampled with the config's ``entry`` (None otherwise)."""
    from diffinv.io.store import open_zarr
    from diffinv.stages.ct3d import task_method
    from diffinv.stages.ct3d.evaluate import VIEWS, view_metrics

    path = a.root / "results/ct3d" / a.dataset / task / entry["name"] / "posterior.zarr"
    if not path.exists():
        return None
    ds = open_zarr(path)
    stored_ct = json.loads(ds.attrs["provenance"])["config"]["ct3d"]
    (stored,) = stored_ct["sampling"]["methods"]
    (stored_task,) = [t for t in stored_ct["tasks"] if t["name"] == task]
    if label not in ds["volume"].values or task_method(stored_task, stored) != entry:
        return None
    v = ds.sel(volume=label).load()
    ref, mean = v["reference"].values, v["mean"].values
    row = {f"psnr_{view}": round(view_metrics(ref, mean, ax)["psnr"], 3) for view, ax in VIEWS.items()}
    return {**row, "source": str(path)}


def sweep(a: argparse.Namespace, cfg: dict[str, Any]) -> None:
    """Tune variants of ``fast`` against the reference on ``--tune-volume``; confirm on the
    evaluation volumes (module docstring)."""
    from diffinv.errors import ConfigError

    cfg = copy.deepcopy(cfg)
    tv = cfg["ct3d"]["baselines"]["tv"]
    tv["lambdas"] = tv["lambdas"][-1:]  # the TV baseline is not compared here: skip its λ search
    unknown = [v for v in [*a.variants, *a.confirm] if v not in VARIANTS]
    if unknown:
        raise ConfigError(
            f"--variants/--confirm: unknown {unknown} (fix: use names of VARIANTS in {__file__})"
        )
    out = a.out / "ct3d_sweep"
    cache_path = out / "reference.csv"
    cache, rows = _read_rows(cache_path), []
    for task in a.tasks or [t["name"] for t in cfg["ct3d"]["tasks"]]:
        fast, reference = _entry(cfg, task, "fast"), _entry(cfg, task, a.reference)
        job = _job(cfg, fast, a.store, a.prior, task, a.device)
        evals = [job.store.bounds.index(b) for b in job.store.eval_bounds]
        tunes = a.tune_volume or [evals[-1] + 1]
        bad = [i for i in tunes if i in evals or not job.store.train_volumes <= i < len(job.store.bounds)]
        if bad:
            raise ConfigError(
                f"--tune-volume {bad}: volumes 0-{job.store.train_volumes - 1} train the prior, {evals} are "
                f"evaluated, the store has {len(job.store.bounds)} (fix: pick other volumes, or a store with "
                "more, e.g. diffinv demo-data ct --set=volumes=30)"
            )
        plan = [(i, "tuning", a.variants) for i in tunes] + [(i, "evaluation", a.confirm) for i in evals]
        for index, role, names in [p for p in plan if p[2]]:
            volume = job.store.volume(job.store.bounds[index])
            key = {"task": task, "volume": volume.label, "seed": cfg["seed"], "entry": json.dumps(reference)}
            ref = _stored_reference(a, task, reference, volume.label) if role == "evaluation" else None
            ref = ref or next((r for r in cache if all(str(r[k]) == str(v) for k, v in key.items())), None)
            if ref is None:
                ref_job = _job(cfg, reference, a.store, a.prior, task, a.device)
                ref = {**key, **_psnr_views(ref_job, volume)}
                ref["source"] = "run"
                cache.append(ref)
                write_csv(cache_path, cache)
                print(json.dumps(ref), flush=True)
            for name in names:
                patch = VARIANTS[name]
                entry = _variant(_entry(cfg, task, patch["method"]) if "method" in patch else fast, patch)
                row = {"task": task, "role": role, "volume": volume.label, "variant": name}
                row.update(_psnr_views(_job(cfg, entry, a.store, a.prior, task, a.device), volume))
                for view in ("axial", "coronal", "sagittal"):
                    row[f"gap_{view}"] = round(float(ref[f"psnr_{view}"]) - row[f"psnr_{view}"], 3)
                row["reference_source"] = ref["source"]
                row["method"] = json.dumps(entry)
                rows.append(row)
                print(json.dumps(row), flush=True)
    ident = lambda r: (r["task"], r["role"], r["volume"], r["variant"])  # noqa: E731
    ran = {ident(r) for r in rows}
    rows = [r for r in _read_rows(out / "sweep.csv") if ident(r) not in ran] + rows  # keep earlier runs' rows
    write_csv(out / "sweep.csv", rows)
    summary = _summarise(rows)
    write_csv(out / "summary.csv", summary)
    for r in summary:
        print(json.dumps(r), flush=True)
    _plot_gaps(summary, out / "gap.png")


def _summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (task, role, variant): PSNR and gap per view averaged over the volumes, with the
    standard error of the gap over volumes (ddof 1; empty for one volume)."""
    out = []
    for key in dict.fromkeys((r["task"], r["role"], r["variant"]) for r in rows):
        sel = [r for r in rows if (r["task"], r["role"], r["variant"]) == key]
        row: dict[str, Any] = dict(zip(("task", "role", "variant"), key)) | {"volumes": len(sel)}
        for view in ("axial", "coronal", "sagittal"):
            gaps = np.array([float(r[f"gap_{view}"]) for r in sel])
            row[f"psnr_{view}"] = round(float(np.mean([float(r[f"psnr_{view}"]) for r in sel])), 3)
            row[f"gap_{view}"] = round(float(gaps.mean()), 3)
            se = float(gaps.std(ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else None
            row[f"gap_{view}_se"] = "" if se is None else round(se, 3)
        out.append(row)
    return out


def _read_rows(path: Path) -> list[dict[str, Any]]:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _plot_gaps(rows: list[dict[str, Any]], path: Path) -> None:
    """Worst-view gap to the reference per variant (mean over the volumes), one panel per (task, role)."""
    from diffinv.plots import plt

    panels = sorted({(r["task"], r["role"]) for r in rows}, key=lambda p: (p[1] != "tuning", p[0]))
    names = list(dict.fromkeys(r["variant"] for r in rows))
    size = (6.5 * len(panels), 0.28 * len(names) + 1.5)
    fig, axes = plt.subplots(1, len(panels), figsize=size, dpi=110, layout="constrained")
    for ax, (task, role) in zip(np.atleast_1d(axes), panels):
        sel = {r["variant"]: r for r in rows if r["task"] == task and r["role"] == role}
        shown = [n for n in names if n in sel]
        worst = [max(float(sel[n][f"gap_{v}"]) for v in ("axial", "coronal", "sagittal")) for n in shown]
        ax.barh(range(len(shown)), worst, color=["tab:green" if w <= 0.5 else "tab:red" for w in worst])
        ax.axvline(0.5, color="k", lw=0.8, ls="--")
        ax.set_yticks(range(len(shown)), shown, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("worst-view PSNR gap to the reference (dB)")
        ax.set_title(f"{task}, {role} volume")
        ax.grid(alpha=0.3, axis="x")
    fig.savefig(path)


def _untrained(cfg: dict[str, Any], root: Path, size: int) -> Path:
    """A checkpoint of the config's network with random weights (timing runs only)."""
    from diffinv.diffusion.networks import build_unet, save_checkpoint, schedule_dict
    from diffinv.diffusion.schedule import VPSchedule

    prior = cfg["ct3d"]["prior"]
    network = {"size": [size, size], "channels": 1, **prior["network"]}
    out = root / "untrained"
    save_checkpoint(
        out,
        build_unet(**network),
        {
            "network": network,
            "prediction": "epsilon",
            "schedule": schedule_dict(VPSchedule(**prior["schedule"])),
            "clip": prior["clip"],
            "data": {"normalisation": {"offset": 0.5, "scale": 0.5}},
        },
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["quality", "scale", "sweep", "_one"])
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--config", type=Path, default=None, help="default: ROOT/config/config.yaml")
    p.add_argument("--store", type=Path, default=None, help="default: ROOT/results/data/ct.zarr")
    p.add_argument(
        "--prior", type=Path, default=None, help="default: ROOT/results/ct3d/demo/prior; scale: none"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reference-steps", type=int, nargs="+", default=[100, 200, 400])
    p.add_argument("--reference", default="mbir", help="the config method swept over --reference-steps")
    p.add_argument("--fast-steps", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--depths", type=int, nargs="+", default=[8, 16, 32, 64])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument(
        "--tune-volume", type=int, nargs="+", default=None, help="sweep: store volume indices to tune on"
    )
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), help="sweep: on the tuning volumes")
    p.add_argument("--confirm", nargs="*", default=[], help="sweep: on the evaluation volumes")
    p.add_argument("--tasks", nargs="+", default=None, help="sweep: default every task of the config")
    p.add_argument("--dataset", default="demo", help="sweep: ROOT/results/ct3d/DATASET has the reference")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    a.config = a.config or a.root / "config/config.yaml"
    a.store = a.store or a.root / "results/data/ct.zarr"
    a.prior = a.prior or a.root / "results/ct3d/demo/prior"
    cfg = load_config(a.config)
    {"quality": quality, "scale": scale, "sweep": sweep, "_one": _one}[a.mode](a, cfg)


if __name__ == "__main__":
    main()
