"""Releases: complete or absent, never modified, self-describing, hard-linked, catalogued."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from phasepipe import __version__, cli, io, release

CONFIG = {"campaign": "t", "release": "auto", "reconstruction": {"refine": ["defocus"], "iterations": 50}}
OTHER_CONFIG = {**CONFIG, "reconstruction": {"refine": [], "iterations": 50}}
SOURCES = {
    "s1": {"s1.tif": "a" * 64},
    "s2": {"s2_0.tif": "b" * 64, "s2_1.tif": "c" * 64},
}


def _store(path: Path, series: str) -> Path:
    """A small reconstructed-like store with the provenance attrs a release reads."""
    rng = np.random.default_rng(len(series) + ord(series[-1]))
    ds = xr.Dataset(
        {
            "phase": (("y", "x"), rng.standard_normal((16, 16))),
            "defocus_nm": (("image",), [-1.6e6, 0.0, 1.6e6]),
        },
        coords={"y": np.arange(16) * 5.0, "x": np.arange(16) * 5.0},
        attrs={"series": series, "status": "ok", "source_files": json.dumps(SOURCES[series])},
    )
    io.write_store(ds, path)
    return path


@pytest.fixture
def campaign(tmp_path):
    """(aggregate dir, stores, releases dir): two series done, one failed."""
    agg = tmp_path / "aggregate"
    (agg / "figures").mkdir(parents=True)
    (agg / "parameters.csv").write_text("series,image,defocus_nm\ns1,0,-1.6e6\ns2,0,-1.6e6\n")
    (agg / "series_summary.csv").write_text("series,status,error\ns1,ok,\ns2,ok,\nbad,failed,series bad: no file\n")
    (agg / "campaign_summary.json").write_text(json.dumps({"counts": {"series": 3, "done": 2, "failed": 1}}))
    (agg / "figures" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n fake")
    work = tmp_path / "work"
    stores = [_store(work / "s1.zarr", "s1"), _store(work / "s2.zarr", "s2")]
    failed = work / "bad.zarr"
    io.write_store(io.failed_dataset("bad", "series bad: no file", "ingest"), failed)
    return agg, [*stores, failed], tmp_path / "releases"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(top: Path) -> list[Path]:
    return sorted(p for p in top.rglob("*") if p.is_file())


def _snapshot(top: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``top``: (sha256, mtime in ns)."""
    return {str(p.relative_to(top)): (_sha256(p), p.stat().st_mtime_ns) for p in _files(top)}


def _leftovers(releases: Path) -> list[str]:
    return [p.name for p in releases.iterdir() if ".tmp-" in p.name]


def test_publish_writes_a_complete_release(campaign):
    """releases/<id>/ holds the aggregate outputs, series stores and a manifest; index.csv and LATEST name it."""
    agg, stores, releases = campaign
    rid = release.publish(agg, stores, releases, "auto", CONFIG)
    assert re.fullmatch(rf"v{re.escape(__version__)}-[0-9a-f]{{12}}", rid)
    folder = releases / rid
    for name in ("parameters.csv", "series_summary.csv", "campaign_summary.json", "figures/x.png"):
        assert (folder / name).read_bytes() == (agg / name).read_bytes()
    for series in ("s1", "s2", "bad"):
        assert (folder / "series" / f"{series}.zarr" / "zarr.json").is_file()
    assert io.open_store(folder / "series" / "s1.zarr").attrs["series"] == "s1"

    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["release"] == rid
    assert manifest["config"] == CONFIG
    config_sha = hashlib.sha256(json.dumps(CONFIG, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert manifest["fingerprint"]["config_sha256"] == config_sha
    assert manifest["fingerprint"]["phasepipe"] == __version__
    assert {"torch", "zarr", "xarray", "numpy", "snakemake", "dask", "python", "phasepipe"} <= set(manifest["versions"])
    assert manifest["versions"]["numpy"] == np.__version__
    assert {name: entry["files"] for name, entry in manifest["inputs"].items()} == {"bad": {}, **SOURCES}
    outputs = {str(p.relative_to(folder)): _sha256(p) for p in _files(folder) if p.name != "manifest.json"}
    assert len(outputs) > 10  # aggregate files and every file of three stores
    assert manifest["outputs"] == outputs

    rows = release.list_releases(releases)
    assert len(rows) == 1
    assert rows[0]["release"] == rid
    assert rows[0]["config_sha256"] == config_sha
    assert (rows[0]["n_series"], rows[0]["n_failed"]) == ("3", "1")
    assert (releases / "LATEST").read_text().strip() == rid
    assert _leftovers(releases) == []


def test_auto_id_is_deterministic(campaign, tmp_path):
    """Same config and inputs give the same auto id elsewhere, whatever the order of stores or config keys."""
    agg, stores, releases = campaign
    first = release.publish(agg, stores, releases, "auto", CONFIG)
    reordered = dict(reversed(list(CONFIG.items())))
    assert release.publish(agg, stores[::-1], tmp_path / "elsewhere", "auto", reordered) == first
    assert release.publish(agg, stores, tmp_path / "third", "auto", OTHER_CONFIG) != first


def test_series_stores_are_hard_links(campaign):
    """Every file of a series store in the release is the work store's file (same inode), not a copy."""
    agg, stores, releases = campaign
    rid = release.publish(agg, stores, releases, "auto", CONFIG)
    source = stores[0]
    files = _files(source)
    assert len(files) >= 3
    for path in files:
        published = releases / rid / "series" / "s1.zarr" / path.relative_to(source)
        assert os.stat(published).st_ino == os.stat(path).st_ino
        assert os.stat(path).st_nlink == 2


def test_republishing_the_same_fingerprint_is_a_no_op(campaign):
    """Publishing unchanged config and inputs again returns the same id and touches no file of the release."""
    agg, stores, releases = campaign
    rid = release.publish(agg, stores, releases, "auto", CONFIG)
    before = _snapshot(releases / rid)
    index = (releases / "index.csv").read_bytes()
    assert release.publish(agg, stores, releases, "auto", CONFIG) == rid
    assert _snapshot(releases / rid) == before
    assert (releases / "index.csv").read_bytes() == index
    assert len(release.list_releases(releases)) == 1
    assert sorted(p.name for p in releases.iterdir()) == sorted([rid, "index.csv", "LATEST"])


def test_changed_config_gives_a_new_release_and_keeps_the_old(campaign):
    """Another config publishes under a new id; the earlier release stays byte-identical; LATEST moves on."""
    agg, stores, releases = campaign
    old = release.publish(agg, stores, releases, "auto", CONFIG)
    before = {k: sha for k, (sha, _) in _snapshot(releases / old).items()}
    new = release.publish(agg, stores, releases, "auto", OTHER_CONFIG)
    assert new != old
    assert {k: sha for k, (sha, _) in _snapshot(releases / old).items()} == before
    assert json.loads((releases / new / "manifest.json").read_text())["config"] == OTHER_CONFIG
    assert [r["release"] for r in release.list_releases(releases)] == [old, new]
    assert (releases / "LATEST").read_text().strip() == new


def test_explicit_name_reused_with_other_config_is_refused(campaign):
    """Reusing an explicit name with another config raises ReleaseError naming it, and writes nothing."""
    agg, stores, releases = campaign
    assert release.publish(agg, stores, releases, "nightly-1", CONFIG) == "nightly-1"
    before = _snapshot(releases)
    with pytest.raises(release.ReleaseError, match="nightly-1"):
        release.publish(agg, stores, releases, "nightly-1", OTHER_CONFIG)
    assert _snapshot(releases) == before
    assert sorted(p.name for p in releases.iterdir()) == ["LATEST", "index.csv", "nightly-1"]
    assert (releases / "LATEST").read_text() == "nightly-1\n"
    assert len(release.list_releases(releases)) == 1


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden"])
def test_release_name_that_escapes_is_refused(campaign, name):
    """A release name with path separators or a leading dot is refused before anything is written."""
    agg, stores, releases = campaign
    with pytest.raises(release.ReleaseError, match=re.escape(repr(name))):
        release.publish(agg, stores, releases, name, CONFIG)
    assert not releases.exists()
    assert not (releases.parent / "escape").exists()


def test_failed_publish_leaves_nothing(campaign, monkeypatch):
    """A publish failing midway leaves no release, no .tmp-* folder, and LATEST and index.csv as they were."""
    agg, stores, releases = campaign
    old = release.publish(agg, stores, releases, "auto", CONFIG)
    before = _snapshot(releases)

    placed = []
    place = release._place

    def broken(source, target, link):
        if len(placed) == 5:  # fails after the tables and part of the stores were linked in
            raise OSError("disk full")
        placed.append(target)
        place(source, target, link)

    monkeypatch.setattr(release, "_place", broken)
    with pytest.raises(OSError, match="disk full"):
        release.publish(agg, stores, releases, "auto", OTHER_CONFIG)
    assert _snapshot(releases) == before
    assert sorted(p.name for p in releases.iterdir()) == sorted([old, "index.csv", "LATEST"])
    assert _leftovers(releases) == []
    assert (releases / "LATEST").read_text().strip() == old


def test_list_releases(campaign):
    """list_releases: [] before any release, then one row per release in order of publication."""
    agg, stores, releases = campaign
    assert release.list_releases(releases) == []
    first = release.publish(agg, stores, releases, "auto", CONFIG)
    second = release.publish(agg, stores[:1], releases, "subset", CONFIG)
    rows = release.list_releases(releases)
    assert [r["release"] for r in rows] == [first, second]
    assert list(rows[0]) == list(release.INDEX_COLUMNS)
    assert rows[1]["inputs_sha256"] != rows[0]["inputs_sha256"]
    assert rows[0]["config_sha256"] == rows[1]["config_sha256"]
    with open(releases / "index.csv", newline="") as fh:
        assert len(list(csv.reader(fh))) == 3


def test_explicit_name_with_other_sheet_values_is_refused(campaign):
    """Same image files but another nominal defocus (the sheet was edited) is other input: refused, not skipped."""
    agg, stores, releases = campaign
    release.publish(agg, stores, releases, "nightly-1", CONFIG)
    ds = io.open_store(stores[0]).load()
    edited = ds.assign(defocus_nominal_nm=("image", [-0.8e6, 0.0, 0.8e6]))
    io.write_store(edited, stores[0])
    with pytest.raises(release.ReleaseError, match="nightly-1"):
        release.publish(agg, stores, releases, "nightly-1", CONFIG)


def test_same_fingerprint_with_other_results_is_refused(campaign):
    """Unchanged config and inputs but different results (code changed in place): refused, release intact."""
    agg, stores, releases = campaign
    rid = release.publish(agg, stores, releases, "nightly-2", CONFIG)
    before = _snapshot(releases)
    original = (agg / "parameters.csv").read_bytes()
    try:
        (agg / "parameters.csv").write_bytes(original + b"extra,row\n")
        with pytest.raises(release.ReleaseError, match="other results"):
            release.publish(agg, stores, releases, rid, CONFIG)
    finally:
        (agg / "parameters.csv").write_bytes(original)
    assert _snapshot(releases) == before


def test_diff_names_added_removed_failed_and_moved(tmp_path, capsys):
    """releases diff: s3 added, s2 removed, s1 newly failed, and a defocus moved by 20 sigma is
    flagged while one moved by 1 sigma is not; the command prints the same."""
    releases = tmp_path / "releases"
    tables = {
        "r1": (
            "series,status\ns1,ok\ns2,ok\ns4,ok\n",
            "series,image,defocus_nm,defocus_std_nm\ns1,0,-1.6e6,100\ns4,0,-1.6e6,100\ns4,1,1.6e6,100\n",
        ),
        "r2": (
            "series,status\ns1,failed\ns3,ok\ns4,ok\n",
            "series,image,defocus_nm,defocus_std_nm\ns3,0,-1.6e6,100\ns4,0,-1.5972e6,100\ns4,1,1.60014e6,100\n",
        ),
    }
    for rid, (summary, params) in tables.items():
        (releases / rid).mkdir(parents=True)
        (releases / rid / "manifest.json").write_text("{}")
        (releases / rid / "series_summary.csv").write_text(summary)
        (releases / rid / "parameters.csv").write_text(params)
    diff = release.diff_releases(releases, "r1", "r2")
    assert (diff["added"], diff["removed"], diff["newly_failed"]) == (["s3"], ["s2"], ["s1"])
    assert [(m["series"], m["image"]) for m in diff["moved"]] == [("s4", 0)]
    assert diff["moved"][0]["sigma"] == pytest.approx(100 * np.sqrt(2))
    with pytest.raises(release.ReleaseError, match="no published release 'r3'"):
        release.diff_releases(releases, "r1", "r3")
    cli.main(["releases", "diff", "r1", "r2", "--releases", str(releases)])
    out = capsys.readouterr().out
    assert "added: s3" in out and "newly failed: s1" in out and "moved beyond 2 sigma: 1" in out


def test_killed_publish_leaves_no_release_and_is_cleaned_up(campaign, tmp_path):
    """SIGKILL in the middle of a publish: no release appears, LATEST is unchanged, and the next
    publish of the same release removes the killed one's temporary folder and completes."""
    agg, stores, releases = campaign
    old = release.publish(agg, stores, releases, "auto", CONFIG)
    script = tmp_path / "slow_publish.py"
    script.write_text(
        "import sys, time, json\n"
        "from pathlib import Path\n"
        "from phasepipe import release\n"
        "place = release._place\n"
        "def slow(source, target, link):\n"
        "    place(source, target, link)\n"
        "    print('placed', flush=True)\n"
        "    time.sleep(30)\n"
        "release._place = slow\n"
        f"release.publish(Path({str(agg)!r}), [Path(p) for p in {[str(s) for s in stores]!r}],"
        f" Path({str(releases)!r}), 'auto', json.loads({json.dumps(json.dumps(OTHER_CONFIG))}))\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "placed"  # killed with the release half built
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_leftovers(releases)) == 1
    assert sorted(p.name for p in releases.iterdir() if not p.name.startswith(".")) == sorted(
        [old, "index.csv", "LATEST"]
    )
    assert (releases / "LATEST").read_text().strip() == old
    new = release.publish(agg, stores, releases, "auto", OTHER_CONFIG)
    assert _leftovers(releases) == [] and (releases / "LATEST").read_text().strip() == new != old
