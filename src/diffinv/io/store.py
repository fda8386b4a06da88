"""Zarr store helpers: atomic writes, one metadata policy, provenance.

Policy (used everywhere in diffinv): zarr format 3 with *consolidated* metadata (a copy of
every array's metadata in the root ``zarr.json``), refreshed by every write and append.
Reason: ``xr.open_zarr(path)`` with default arguments looks for consolidated metadata
first; on an unconsolidated store it warns (RuntimeWarning) and then lists the directory,
where the ``.snakemake_timestamp`` file that Snakemake drops into ``directory()`` outputs
raises a second warning. With consolidated metadata neither happens. Consolidated
metadata is not (yet) in the zarr v3 specification, so zarr warns when writing it; that
one warning is silenced here. Zarr format 2 (``.zmetadata``) would open just as quietly
but would give up v3 for every store. Per-array metadata stays authoritative:
:func:`open_zarr` reads it (``consolidated=False``), so stores written before this policy
(unconsolidated) still open, and a stale copy could not mislead diffinv itself.
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import platform
import shutil
import subprocess
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import xarray as xr

from diffinv.errors import InputError

ZARR_FORMAT = 3
PROVENANCE_ATTR = "provenance"
_VERSIONED_PACKAGES = ("diffinv", "torch", "numpy", "xarray", "zarr", "diffusers", "h5py")
# zarr's warning on writing consolidated metadata in format 3 (see the module docstring)
_V3_CONSOLIDATED_WARNING = "Consolidated metadata is currently not part in the Zarr format 3 specification"


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path that is renamed onto ``path`` only on success.

    An interrupted or failing writer leaves no half-written ``path``: the temporary
    path is removed, and an existing ``path`` is replaced only after the new one is
    complete. An existing folder is replaced only if it is empty or a store diffinv wrote
    (:func:`is_diffinv_store`); anything else is refused before any work. Temporary
    siblings left by killed writers (their process is gone) are removed first.
    """
    final = Path(path).absolute()
    if not final.name or final == final.parent:
        raise InputError(
            path, "is not a path a new store or file can be written to", "give a new name, e.g. out.zarr"
        )
    _check_replaceable(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(final)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if final.exists():
            if tmp.is_dir():
                _check_replaceable(final, must_be_store=True)
            trash = final.with_name(f"{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(final, trash)
            os.replace(tmp, final)
            _remove(trash)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            _remove(tmp)


def is_diffinv_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a zarr store with diffinv's provenance attribute."""
    p = Path(path)
    for name, nested in (("zarr.json", True), (".zattrs", False)):
        meta = p / name
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text())
            except (OSError, ValueError):
                return False
            attrs = attrs.get("attributes", {}) if nested else attrs
            return isinstance(attrs, dict) and PROVENANCE_ATTR in attrs
    return False


def _check_replaceable(final: Path, must_be_store: bool = False) -> None:
    """Refuse to replace a folder that is neither empty nor a diffinv store (or a file by a store)."""
    if final.is_dir():
        if is_diffinv_store(final) or not any(p.name != ".snakemake_timestamp" for p in final.iterdir()):
            return
    elif not (must_be_store and final.exists()):
        return
    raise InputError(
        final,
        "exists and is not a store written by diffinv: refusing to replace it",
        "choose another output path, or move it away yourself",
    )


def _clear_stale(final: Path) -> None:
    """Remove ``final``'s temporary and old siblings whose writing process no longer exists."""
    for kind in ("tmp", "old"):
        prefix = f"{final.name}.{kind}-"
        for sibling in final.parent.glob(f"{glob.escape(prefix)}*"):
            owner = sibling.name[len(prefix) :].split("-")[0]
            if not owner.isdigit() or not _alive(int(owner)):
                _remove(sibling)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def portable_strings(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode arrays as variable-length strings (zarr v3 has no spec for ``<U``)."""
    fixed = [name for name, v in ds.variables.items() if v.dtype.kind == "U"]
    return ds.assign({n: ds[n].astype(object) for n in fixed if n in ds.data_vars}).assign_coords(
        {n: ds[n].astype(object) for n in fixed if n in ds.coords}
    )


@contextmanager
def _quiet_consolidation() -> Iterator[None]:
    """Silence only zarr's warning that v3 consolidated metadata is outside the specification."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_V3_CONSOLIDATED_WARNING, category=UserWarning)
        yield


def create_zarr(ds: xr.Dataset, path: str | os.PathLike[str], encoding: Mapping | None = None) -> None:
    """Write ``ds`` to a new consolidated zarr v3 store (not atomic: use inside :func:`atomic_path`)."""
    with _quiet_consolidation():
        portable_strings(ds).to_zarr(
            path, mode="w", zarr_format=ZARR_FORMAT, consolidated=True, encoding=dict(encoding or {})
        )


def write_zarr(ds: xr.Dataset, path: str | os.PathLike[str], encoding: Mapping | None = None) -> Path:
    """Write ``ds`` to a zarr v3 store at ``path`` atomically (temporary path, then rename)."""
    with atomic_path(path) as tmp:
        create_zarr(ds, tmp, encoding)
    return Path(path)


def append_zarr(ds: xr.Dataset, path: str | os.PathLike[str], append_dim: str) -> None:
    """Append ``ds`` along ``append_dim`` to a store made by :func:`create_zarr` (streaming writers).

    Streaming writers should write into a path obtained from :func:`atomic_path` so that
    the store appears only once complete. xarray reads the existing store's per-array
    metadata and re-consolidates when the append is done, so after the last append the
    consolidated copy describes the whole store.
    """
    with _quiet_consolidation():
        portable_strings(ds).to_zarr(
            path, mode="a", append_dim=append_dim, zarr_format=ZARR_FORMAT, consolidated=True
        )


def write_zarr_blocks(
    blocks: Iterable[xr.Dataset],
    path: str | os.PathLike[str],
    append_dim: str,
    encoding: Mapping | None = None,
    desc: str | None = None,
    total: int | None = None,
) -> Path:
    """Write a stream of datasets, concatenated along ``append_dim``, to one store atomically.

    The first block creates the store (with ``encoding``) and sets the store's attributes;
    later blocks are appended carrying those attributes (an append replaces them). Memory
    holds one block at a time. The store appears at ``path`` only once every block is
    written; an exception from the iterator leaves nothing behind. With ``desc``, a progress
    bar on stderr counts the blocks (rate, and time left when ``total`` blocks are known) once
    the writing has taken 2 s.
    """
    if desc is not None:
        from tqdm import tqdm

        # shown only after 2 s: short runs and early refusals keep stderr to their one line
        blocks = tqdm(
            blocks, desc=desc, total=total, unit="block", mininterval=2.0, delay=2.0, dynamic_ncols=True
        )
    with atomic_path(path) as tmp:
        attrs = None
        for block in blocks:
            if attrs is None:
                create_zarr(block, tmp, encoding)
                attrs = dict(block.attrs)
            else:
                block = block.copy(deep=False)
                block.attrs = dict(attrs)
                append_zarr(block, tmp, append_dim)
        if attrs is None:
            raise InputError(
                path,
                "no data to write: the inputs or the selection are empty",
                "check the inputs and the selection options",
            )
    return Path(path)


def update_attrs(store: str | os.PathLike[str], attrs: Mapping[str, Any]) -> None:
    """Add ``attrs`` to a written store's attributes and consolidate its metadata again.

    Not atomic on its own: call it inside the job that wrote the store, so that a failure fails
    the job (Snakemake then removes the output).
    """
    import zarr

    zarr.open_group(store, mode="r+", use_consolidated=False).attrs.update(dict(attrs))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_V3_CONSOLIDATED_WARNING, category=UserWarning)
        zarr.consolidate_metadata(store)


def open_zarr(path: str | os.PathLike[str]) -> xr.Dataset:
    """Open a diffinv zarr store lazily; a clear error if it is missing or not a store."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such zarr store", "run the step that writes it first, or fix the path")
    try:
        with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp in directory() outputs
            warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
            # per-array metadata: also opens stores written before consolidation was the policy
            return xr.open_zarr(p, consolidated=False)
    except Exception as exc:  # zarr raises several types for a broken store
        raise InputError(
            p,
            f"not a readable zarr store ({type(exc).__name__}: {exc})",
            "delete it and rerun the step that writes it",
        ) from exc


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str:
    """The git commit of the diffinv source tree (``+dirty`` if modified), or ``unknown``."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine results."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def provenance(**fields: Any) -> dict[str, Any]:
    """Provenance record: the given fields plus versions, git commit, host and UTC time."""
    record: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "host": platform.node(),
    }
    record.update(fields)
    return record


def set_provenance(ds: xr.Dataset, record: Mapping[str, Any]) -> xr.Dataset:
    """Attach ``record`` as a JSON string in ``ds.attrs['provenance']`` (netCDF-safe)."""
    ds.attrs[PROVENANCE_ATTR] = json.dumps(record, default=str, sort_keys=True)
    return ds


def get_provenance(ds: xr.Dataset) -> dict[str, Any]:
    """Parse the provenance record of a diffinv store."""
    return json.loads(ds.attrs[PROVENANCE_ATTR])
