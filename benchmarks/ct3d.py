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

Run: PYTHONPATH=src python benchmarks/ct3d.py quality|scale [--root DIR] [--threads N] ...
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

import torch
from _common import write_csv

from diffinv.config import load_config
from diffinv.stages import verb_config

OUT = Path(__file__).parent / "out"


def _job(cfg: dict[str, Any], entry: dict[str, Any], store: Path, prior: Path, task: str, device: str) -> Any:
    from diffinv.stages.ct3d.run import Reconstruction

    cfg = copy.deepcopy(cfg)
    cfg["ct3d"]["sampling"]["methods"] = [entry]
    job_cfg = verb_config(cfg, "ct3d", "sample", entry["name"])
    args = argparse.Namespace(data=str(store), prior=str(prior), task=task)
    return Reconstruction(args, job_cfg, device)


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
                entry = {**copy.deepcopy(method), "steps": steps}
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
        fast = next(m for m in cfg["ct3d"]["sampling"]["methods"] if m["name"] == "fast")
        entry = {**copy.deepcopy(fast), "samples": 1}
        cfg["ct3d"]["sampling"]["batch_size"] = 1
        job = _job(cfg, entry, root / "ct.zarr", prior, cfg["ct3d"]["tasks"][0]["name"], a.device)
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
    p.add_argument("mode", choices=["quality", "scale", "_one"])
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
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    a.config = a.config or a.root / "config/config.yaml"
    a.store = a.store or a.root / "results/data/ct.zarr"
    a.prior = a.prior or a.root / "results/ct3d/demo/prior"
    cfg = load_config(a.config)
    {"quality": quality, "scale": scale, "_one": _one}[a.mode](a, cfg)


if __name__ == "__main__":
    main()
