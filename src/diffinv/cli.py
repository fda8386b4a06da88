"""The ``diffinv`` command line: ingest, demo-data, train, sample, evaluate, plugins.

Every verb exits 0 on success and 2 with one line ``diffinv: error: <file or key>: <problem>
(fix: <fix>)`` on bad input, having written nothing.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from diffinv.errors import DiffinvError

#: ``diffinv ingest SOURCE``: module ``diffinv.io.<SOURCE>`` exposes
#: ``ingest(inputs: list[Path], out: Path, **options) -> Path``.
INGEST_SOURCES = {
    "fastmri": "fastMRI k-space HDF5 files or folders",
    "era5": "ERA5 netCDF (new and legacy CDS), GRIB, zarr",
    "igra": "IGRA v2 station/derived files, plain or .gz",
    "ct": "LoDoPaB HDF5, per-projection TIFF stacks, TIFF/HDF5 sinograms, NeXus scans",
}

#: ``diffinv demo-data KIND``: module ``diffinv.demo.<KIND>`` exposes
#: ``write_demo(out: Path, seed: int, **options) -> list[Path]``.
DEMO_KINDS = {
    "mri": "fastMRI-layout HDF5 from synthetic phantoms",
    "era5": "ERA5-like netCDF (new CDS layout)",
    "igra": "IGRA v2 text files sampled from the demo ERA5 fields",
    "ct": "LoDoPaB-layout projection HDF5 from 3D phantoms",
}


def _options(pairs: Sequence[str]) -> dict[str, object]:
    """Parse ``key=value`` pairs; values are YAML scalars, lists or mappings (see ``parse_value``).

    Raises :class:`DiffinvError` for a malformed pair, a key given twice or a value that is not YAML.
    """
    import re

    from diffinv.io.options import parse_value

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DiffinvError(f"option {pair!r}: expected key=value (fix: e.g. --set levels=[500,850])")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
            raise DiffinvError(
                f"option {pair!r}: {key!r} is not an option name (fix: e.g. --set levels=[500,850])"
            )
        name = key.replace("-", "_")
        if name in out:
            raise DiffinvError(f"option {name!r} given twice (fix: give each --set key once)")
        out[name] = parse_value(name, value)
    return out


def _check_options(func: Callable[..., object], options: dict[str, object], what: str) -> None:
    """Unknown ``--set`` keys are an error listing the valid ones."""
    params = inspect.signature(func).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [
        n
        for n, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
        or (p.default is not inspect.Parameter.empty and n != "seed")
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DiffinvError(
            f"{what}: unknown option(s) {', '.join(unknown)} (fix: use {', '.join(valid) or 'no options'})"
        )


def _cmd_ingest(args: argparse.Namespace) -> None:
    module = importlib.import_module(f"diffinv.io.{args.source}")
    options = _options(args.set)
    _check_options(module.ingest, options, f"ingest {args.source}")
    out = module.ingest([Path(p) for p in args.inputs], Path(args.output), **options)
    if args.comment:
        from diffinv.io.store import update_attrs

        update_attrs(out, {"comment": args.comment})
    print(f"wrote {out}")


def _cmd_demo_data(args: argparse.Namespace) -> None:
    module = importlib.import_module(f"diffinv.demo.{args.kind}")
    options = _options(args.set)
    _check_options(module.write_demo, options, f"demo-data {args.kind}")
    paths = module.write_demo(Path(args.output), seed=args.seed, **options)
    print(f"wrote {len(paths)} files under {args.output}")


def _cmd_report_table(args: argparse.Namespace) -> None:
    from diffinv.report import write_table

    print(f"wrote {write_table(Path(args.csv), Path(args.output), args.title)}")


def _cmd_quicklook(args: argparse.Namespace) -> None:
    from diffinv import quicklook

    func = quicklook.QUICKLOOKS[args.source][0]
    options = {"era5": ("variable", "level", "time"), "igra": ("stations",), "ct": ("projection",)}
    given = {k: getattr(args, k) for k in ("variable", "level", "time", "stations", "projection")}
    wrong = sorted(k for k, v in given.items() if v is not None and k not in options[args.source])
    if wrong:
        raise DiffinvError(
            f"quicklook {args.source}: --{', --'.join(wrong)} not used by this source "
            f"(fix: use {', '.join('--' + o for o in options[args.source])})"
        )
    kwargs = {k: v for k, v in given.items() if v is not None}
    print(f"wrote {func(Path(args.store), Path(args.output), **kwargs)}")


def _cmd_fwd_evaluate(args: argparse.Namespace) -> None:
    from diffinv.stages.fwd.evaluate import evaluate

    table = evaluate(
        [Path(s) for s in args.stores], Path(args.metrics), Path(args.figures) if args.figures else None
    )
    print(table.groupby("reconstruction")[["psnr", "ssim"]].mean().to_string())


def _cmd_plugins(args: argparse.Namespace) -> None:
    from diffinv.plugins import describe_plugins

    print(describe_plugins())


def _cmd_atmos_evaluate(args: argparse.Namespace) -> None:
    from diffinv.stages.atmos.evaluate import evaluate

    figures = Path(args.figures) if args.figures else None
    table = evaluate([Path(s) for s in args.stores], Path(args.metrics), figures)
    columns = ["method", "estimate", "channel", "rmse", "crps", "spread_skill"]
    print(table[table.scope == "field"][columns].to_string(index=False))


def _cmd_atmos_calibrate(args: argparse.Namespace) -> None:
    from diffinv.stages.atmos.calibrate import calibrate_stores

    table = calibrate_stores(
        Path(args.calibration), Path(args.evaluation), Path(args.output), Path(args.table), args.level
    )
    columns = ["method", "ensemble", "channel", "rmse", "crps", "spread_skill", "cov90", "coverage_conformal"]
    print(table[columns].to_string(index=False))


def _cmd_calibrate_stores(args: argparse.Namespace) -> None:
    from diffinv.calibration import calibrate_from_arguments

    calibrate_from_arguments(args, args.level, args.score)


def _cmd_atmos_summarise(args: argparse.Namespace) -> None:
    from diffinv.stages.atmos.evaluate import summarise

    print(f"wrote {args.output} ({len(summarise([Path(m) for m in args.metrics], Path(args.output)))} rows)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffinv")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``diffinv``."""
    parser = argparse.ArgumentParser(prog="diffinv", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"diffinv {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", help="what to do (diffinv VERB --help)")

    ingest = verbs.add_parser("ingest", help="read raw files into an analysis-ready zarr store")
    ingest.add_argument(
        "source",
        choices=sorted(INGEST_SOURCES),
        help="; ".join(f"{k}: {v}" for k, v in INGEST_SOURCES.items()),
    )
    ingest.add_argument("inputs", nargs="+", help="files or folders")
    ingest.add_argument("-o", "--output", required=True, help="output .zarr store")
    ingest.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="reader option (repeatable)"
    )
    ingest.add_argument(
        "--comment",
        help="a note kept in the store's 'comment' attribute (the demo rules mark synthetic inputs)",
    )
    ingest.set_defaults(func=_cmd_ingest)

    demo = verbs.add_parser("demo-data", help="write demo input files in the real formats")
    demo.add_argument(
        "kind", choices=sorted(DEMO_KINDS), help="; ".join(f"{k}: {v}" for k, v in DEMO_KINDS.items())
    )
    demo.add_argument("-o", "--output", required=True, help="output folder")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the generated data (default 0)")
    demo.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="generator option (repeatable)"
    )
    demo.set_defaults(func=_cmd_demo_data)

    table = verbs.add_parser("report-table", help="a summary CSV as an HTML table for the Snakemake report")
    table.add_argument("csv", help="summary CSV written by 'diffinv summarise' or 'diffinv ads-summarise'")
    table.add_argument(
        "-o", "--output", required=True, help="output .html file (table, caption, column notes)"
    )
    table.add_argument("--title", default="Summary", help="the table's caption (default: Summary)")
    table.set_defaults(func=_cmd_report_table)

    from diffinv.quicklook import QUICKLOOKS

    look = verbs.add_parser("quicklook", help="a quick-look PNG of an ingested store, for the report")
    look.add_argument(
        "source",
        choices=sorted(QUICKLOOKS),
        help="; ".join(f"{k}: {what}" for k, (_, what) in QUICKLOOKS.items()),
    )
    look.add_argument("store", help="the .zarr store written by 'diffinv ingest SOURCE'")
    look.add_argument("-o", "--output", required=True, help="output .png file")
    look.add_argument("--variable", help="era5: variable to map (default: t2m, t, z, ... whichever is first)")
    look.add_argument("--level", type=float, help="era5: pressure level in hPa, nearest (default 500)")
    look.add_argument("--time", help="era5: ISO 8601 time, nearest (default: the first)")
    look.add_argument("--stations", type=int, help="igra: number of stations drawn (default 4)")
    look.add_argument(
        "--projection", type=int, help="ct: index of the sinogram drawn (default: the middle one)"
    )
    look.set_defaults(func=_cmd_quicklook)

    plugins = verbs.add_parser("plugins", help="list installed solvers, guidance and search methods")
    plugins.set_defaults(func=_cmd_plugins)

    fwd = verbs.add_parser("fwd-evaluate", help="metrics CSV and figures of fwd stores (demo truth)")
    fwd.add_argument("stores", nargs="+", help="posterior.zarr stores written by 'diffinv sample fwd'")
    fwd.add_argument("--metrics", required=True, help="output CSV: PSNR/SSIM per volume and reconstruction")
    fwd.add_argument("--figures", help="output folder of PNGs, three orthogonal views per volume")
    fwd.set_defaults(func=_cmd_fwd_evaluate)

    atmos = verbs.add_parser("atmos-evaluate", help="metrics CSVs and figures of atmos stores")
    atmos.add_argument("stores", nargs="+", help="posterior.zarr stores written by 'diffinv sample atmos'")
    atmos.add_argument("--metrics", required=True, help="output metrics CSV (more tables beside it)")
    atmos.add_argument("--figures", help="output folder of maps, rank histograms, spread-skill and spectra")
    atmos.set_defaults(func=_cmd_atmos_evaluate)
    summary = verbs.add_parser("atmos-summarise", help="the atmos metrics of every method in one CSV")
    summary.add_argument("metrics", nargs="+", help="metrics CSVs written by 'diffinv atmos-evaluate'")
    summary.add_argument("-o", "--output", required=True, help="output summary CSV")
    summary.set_defaults(func=_cmd_atmos_summarise)
    cal = verbs.add_parser(
        "atmos-calibrate",
        help="spread inflation and conformal intervals of an atmos store, fitted on another store's times",
    )
    cal.add_argument("--calibration", required=True, help="posterior.zarr of the calibration times")
    cal.add_argument("--evaluation", required=True, help="posterior.zarr to calibrate (disjoint times)")
    cal.add_argument("-o", "--output", required=True, help="output calibrated posterior.zarr")
    cal.add_argument("--table", required=True, help="output CSV of raw and calibrated scores")
    cal.add_argument("--level", type=float, default=0.9, help="conformal interval level (default 0.9)")
    cal.set_defaults(func=_cmd_atmos_calibrate)
    stores = verbs.add_parser(
        "calibrate-stores",
        help="split conformal intervals of any stage's samples store (3D CT, fwd, ...), fitted on "
        "another store's cases",
    )
    stores.add_argument(
        "--calibration", required=True, help="store of the calibration cases (samples + truth)"
    )
    stores.add_argument("--evaluation", required=True, help="store to calibrate (no case shared)")
    stores.add_argument("-o", "--output", required=True, help="output store of raw and calibrated bounds")
    stores.add_argument("--table", required=True, help="output CSV: coverage curve, raw against calibrated")
    stores.add_argument("--figure", help="output PNG: coverage curve, rank histogram, error against std")
    stores.add_argument("--level", type=float, default=0.9, help="nominal coverage 1 - alpha (default 0.9)")
    stores.add_argument("--score", choices=("scaled", "cqr"), default="scaled", help="conformity score")
    stores.set_defaults(func=_cmd_calibrate_stores)

    from diffinv import tasks_cli

    tasks_cli.add_verbs(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``diffinv`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except DiffinvError as exc:
        print(f"diffinv: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
