"""Ingest throughput and peak memory against input size: IGRA v2 parsing and ERA5 conversion.

Inputs are replicated 1x, 4x, 16x and 64x: the IGRA Vienna sample (from ../shared/data/real, or
the demo files when that folder is absent) concatenated as plain text, and the ERA5 demo
fields with 4x, 16x and 64x as many time steps (one netCDF file). Each case runs ``ingest`` in a
fresh subprocess that reports wall time and its peak resident memory (``VmHWM``, reset after
imports) above the resident memory after imports; memory bounded by a block or chunk shows
as a delta that stops growing with the input.

Usage: ``python benchmarks/ingest_throughput.py`` (prints a table and writes
``benchmarks/out/ingest_throughput.csv``).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import write_csv

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
OUT = ROOT / "benchmarks" / "out" / "ingest_throughput.csv"
REPLICAS = (1, 4, 16, 64)
ERA5_TIME_CHUNK = 16  # time steps per chunk (about 3 MB of the demo grid)


def _status_mb(key: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak) of this process from /proc/self/status, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _child(source: str, src: str, workdir: str) -> None:
    """Run one ingest and print its figures as JSON (in a fresh process, Linux /proc needed)."""
    from diffinv.io import era5, igra

    baseline = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    if source == "igra":
        igra.ingest([Path(src)], Path(workdir) / "igra.zarr")
    else:
        era5.ingest([Path(src)], Path(workdir) / "era5.zarr", time_chunk=ERA5_TIME_CHUNK)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_baseline_mb": baseline, "rss_peak_mb": _status_mb("VmHWM")}))


def _igra_input(workdir: Path, replicas: int) -> Path:
    vienna = REAL / "igra" / "AUM00011035-data.txt.gz"
    if vienna.exists():
        text = gzip.decompress(vienna.read_bytes())
    else:
        from diffinv.demo import igra as demo_igra

        files = demo_igra.write_demo(workdir / "igra-demo", seed=0, stations=8, derived=False)
        text = b"".join(gzip.decompress(p.read_bytes()).rsplit(b"\n#", 1)[0] + b"\n" for p in files)
    path = workdir / f"igra-x{replicas}.txt"
    path.write_bytes(text * replicas)
    return path


def _era5_input(workdir: Path, replicas: int) -> Path:
    from diffinv.demo import era5 as demo_era5

    (path,) = demo_era5.write_demo(workdir / f"era5-x{replicas}", seed=0, times=16 * replicas, files=1)
    return path


def main() -> None:
    """Run every case, print a table and write the CSV."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for source, make in (("igra", _igra_input), ("era5", _era5_input)):
            for replicas in REPLICAS:
                work = Path(tmp) / f"{source}-{replicas}"
                work.mkdir()
                src = make(work, replicas)
                size_mb = src.stat().st_size / 2**20
                done = subprocess.run(
                    [sys.executable, __file__, "--child", source, str(src), str(work)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                fig = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append(
                    {
                        "source": source,
                        "input": "Vienna sample"
                        if source == "igra" and (REAL / "igra").exists()
                        else ("demo" if source == "era5" else "demo stations"),
                        "replicas": replicas,
                        "input_mb": round(size_mb, 2),
                        "seconds": round(fig["seconds"], 3),
                        "mb_per_s": round(size_mb / fig["seconds"], 1),
                        "rss_baseline_mb": round(fig["rss_baseline_mb"], 1),
                        "rss_peak_mb": round(fig["rss_peak_mb"], 1),
                        "rss_delta_mb": round(fig["rss_peak_mb"] - fig["rss_baseline_mb"], 1),
                    }
                )
    write_csv(OUT, rows)
    header = (
        f"{'source':<6} {'input':<14} {'x':>3} {'MB':>7} {'s':>7} {'MB/s':>7} "
        f"{'RSS base':>9} {'RSS peak':>9} {'delta':>7}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['source']:<6} {r['input']:<14} {r['replicas']:>3} {r['input_mb']:>7} {r['seconds']:>7} "
            f"{r['mb_per_s']:>7} {r['rss_baseline_mb']:>9} {r['rss_peak_mb']:>9} {r['rss_delta_mb']:>7}"
        )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(*sys.argv[2:5])
    else:
        main()
