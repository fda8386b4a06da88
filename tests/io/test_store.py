import json
import re
import warnings

import numpy as np
import pytest
import xarray as xr

from diffinv.errors import InputError
from diffinv.io.store import (
    append_zarr,
    atomic_path,
    create_zarr,
    get_provenance,
    open_zarr,
    provenance,
    set_provenance,
    write_zarr,
    write_zarr_blocks,
)


def _ds():
    ds = xr.Dataset(
        {
            "samples": (
                ("case", "sample", "y", "x"),
                (np.arange(24).reshape(1, 2, 3, 4) * (1 + 1j)).astype(np.complex64),
            )
        },
        coords={"case": ["file.h5:0"], "y": ("y", np.arange(3), {"units": "pixel"})},
    )
    return set_provenance(ds, provenance(config={"a": {"b": 1}}, seed=3, nfe=20))


def test_round_trip_keeps_complex_values_strings_and_provenance(tmp_path):
    ds = _ds()
    write_zarr(ds, tmp_path / "p.zarr")
    back = open_zarr(tmp_path / "p.zarr").load()
    xr.testing.assert_equal(back["samples"], ds["samples"])
    assert back["case"].values.tolist() == ["file.h5:0"]
    prov = get_provenance(back)
    assert prov["config"] == {"a": {"b": 1}} and prov["seed"] == 3 and prov["nfe"] == 20
    assert {"versions", "git_commit", "created"} <= set(prov)
    assert prov["versions"]["torch"]
    json.loads(back.attrs["provenance"])  # stored as a JSON string (netCDF-safe)


def test_failed_write_leaves_nothing_and_keeps_the_old_store(tmp_path):
    target = tmp_path / "p.zarr"
    write_zarr(_ds(), target)
    before = open_zarr(target).load()
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            create_zarr(_ds(), tmp)
            raise RuntimeError("interrupted mid-job")
    xr.testing.assert_identical(open_zarr(target).load(), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.zarr"], "no temporary store may remain"


def test_interrupted_first_write_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "new.zarr") as tmp:
            create_zarr(_ds(), tmp)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_opening_a_missing_or_broken_store_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such zarr store"):
        open_zarr(tmp_path / "absent.zarr")
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{garbage")
    with pytest.raises(InputError, match="broken.zarr: not a readable zarr store"):
        open_zarr(broken)


def _open_strictly(path):
    """``xr.open_zarr`` with default arguments, every warning an error (what a notebook user runs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return xr.open_zarr(path).load()


def _block(i):
    ds = xr.Dataset(
        {
            "samples": (("case", "x"), np.full((2, 3), i + 1j, dtype=np.complex64)),
            "label": ("case", [f"case{2 * i}", f"case{2 * i + 1}"]),
        },
        coords={"case": [2 * i, 2 * i + 1]},
    )
    return set_provenance(ds, provenance(block=i))


def test_default_open_zarr_is_quiet_on_write_zarr_stores(tmp_path):
    ds = _ds()
    write_zarr(ds, tmp_path / "p.zarr")
    back = _open_strictly(tmp_path / "p.zarr")
    xr.testing.assert_equal(back["samples"], ds["samples"])
    assert get_provenance(back)["seed"] == 3


def test_default_open_zarr_is_quiet_and_complete_on_block_stores(tmp_path):
    """Every block must be visible through the consolidated metadata (refreshed after the last append)."""
    path = write_zarr_blocks(
        (_block(i) for i in range(4)), tmp_path / "b.zarr", "case", {"samples": {"chunks": (2, 3)}}
    )
    back = _open_strictly(path)
    assert back.sizes["case"] == 8 and back["case"].values.tolist() == list(range(8))
    assert back["label"].values.tolist() == [f"case{k}" for k in range(8)]
    np.testing.assert_array_equal(back["samples"].values[:, 0], np.repeat(np.arange(4) + 1j, 2))
    assert get_provenance(back)["block"] == 0  # the first block's attributes, kept by every append
    xr.testing.assert_identical(back, open_zarr(path).load())  # diffinv's reader agrees


def test_default_open_zarr_is_quiet_with_a_snakemake_timestamp(tmp_path):
    """Snakemake drops ``.snakemake_timestamp`` into ``directory()`` outputs."""
    for name, writer in [
        ("w.zarr", lambda p: write_zarr(_ds(), p)),
        ("b.zarr", lambda p: write_zarr_blocks((_block(i) for i in range(3)), p, "case")),
    ]:
        path = tmp_path / name
        writer(path)
        (path / ".snakemake_timestamp").write_text("")
        assert _open_strictly(path).sizes == open_zarr(path).sizes


def test_appends_keep_the_consolidated_metadata_current(tmp_path):
    """create_zarr + append_zarr used directly (streaming writers) also leave a complete store."""
    path = tmp_path / "a.zarr"
    create_zarr(_block(0), path)
    for i in (1, 2):
        append_zarr(_block(i), path, "case")
        assert _open_strictly(path).sizes["case"] == 2 * (i + 1)
    meta = json.loads((path / "zarr.json").read_text())
    assert meta["consolidated_metadata"]["metadata"]["samples"]["shape"] == [6, 3]


def test_an_existing_folder_that_is_not_a_store_is_never_replaced(tmp_path):
    import xarray as xr

    from diffinv.errors import InputError
    from diffinv.io.store import write_zarr

    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("years of work")
    with pytest.raises(InputError, match="not a store written by diffinv"):
        write_zarr(xr.Dataset({"a": ("x", [1.0])}), mine)
    assert (mine / "chapter1.tex").read_text() == "years of work"
    with pytest.raises(InputError):
        write_zarr(xr.Dataset({"a": ("x", [1.0])}), ".")
    assert not list(tmp_path.glob("*.tmp-*"))


def test_a_diffinv_store_is_replaced_and_stale_temporaries_are_cleared(tmp_path):
    import os

    import xarray as xr

    from diffinv.io.store import is_diffinv_store, open_zarr, provenance, set_provenance, write_zarr

    out = tmp_path / "out.zarr"
    write_zarr(set_provenance(xr.Dataset({"a": ("x", [1.0])}), provenance(step="t")), out)
    assert is_diffinv_store(out)
    dead = _finished_pid()
    stale = tmp_path / f"out.zarr.tmp-{dead}-abcd1234"
    stale.mkdir()
    live = tmp_path / f"out.zarr.tmp-{os.getpid()}-abcd1234"
    live.mkdir()
    write_zarr(set_provenance(xr.Dataset({"a": ("x", [2.0])}), provenance(step="t")), out)
    assert float(open_zarr(out)["a"][0]) == 2.0
    assert not stale.exists(), "a killed writer's temporary store is removed"
    assert live.exists(), "a running writer's temporary store is kept"


def _finished_pid() -> int:
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_long_block_writes_show_progress_and_short_ones_stay_quiet(tmp_path, capsys):
    """Ingestion's bar (rate, time left with a total) appears once writing takes 2 s, never before."""
    import time

    import numpy as np
    import xarray as xr

    from diffinv.io.store import open_zarr, write_zarr_blocks

    def blocks(pause):
        for k in range(3):
            time.sleep(pause)
            yield xr.Dataset({"v": ("t", np.full(2, float(k)))})

    write_zarr_blocks(blocks(0.0), tmp_path / "quick.zarr", "t", desc="ingest demo", total=3)
    assert "ingest demo" not in capsys.readouterr().err
    write_zarr_blocks(blocks(1.1), tmp_path / "slow.zarr", "t", desc="ingest demo", total=3)
    err = capsys.readouterr().err
    assert "ingest demo" in err and "3/3" in err and "s/block" in err, err  # the rate
    assert re.search(r"2/3 \[\d\d:\d\d<\d\d:\d\d", err), err  # elapsed < time left
    assert open_zarr(tmp_path / "slow.zarr")["v"].values.tolist() == [0, 0, 1, 1, 2, 2]
