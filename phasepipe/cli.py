"""The ``phasepipe`` command line: one subcommand per stage, as the Snakemake rules call them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from phasepipe import __version__

log = logging.getLogger("phasepipe")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _progress_bar(total: int | None, description: str, unit: str):
    """A tqdm bar when a person is watching; None otherwise (the library's log lines suffice)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit=unit, leave=False)


def cmd_simulate(args: argparse.Namespace) -> None:
    from phasepipe import simulate

    state_options = {
        "--thickness-nm": args.thickness_nm,
        "--ms": args.ms,
        "--pixel-size-nm": args.pixel_size_nm,
        "--partner": args.partner,
    }
    if args.ovf is None and any(v is not None for v in state_options.values()):
        log.error("%s go with --ovf", ", ".join(k for k, v in state_options.items() if v is not None))
        sys.exit(2)
    if args.ovf is not None:
        _simulate_ovf(args)
        return
    if args.demo:
        specs = simulate.demo_campaign()
    else:
        specs = [
            simulate.SeriesSpec(
                series=args.series or args.texture,
                texture=args.texture,
                size_px=args.size,
                noise_fraction=args.noise,
                calibration=args.calibration,
                seed=args.seed,
            )
        ]
    sheet = simulate.write_campaign(Path(args.out), specs)
    log.info("wrote %d series and the sheet %s", len(specs), sheet)


def _simulate_ovf(args: argparse.Namespace) -> None:
    """``simulate --ovf``: one series of a micromagnetic state (:mod:`phasepipe.micromagnetic`); bad
    input (the file missing or unusable, no Ms) exits 1 with one line naming the file."""
    from phasepipe import imagefiles, micromagnetic

    if args.demo:
        log.error("--ovf and --demo exclude each other")
        sys.exit(2)
    acquisition = micromagnetic.default_acquisition(noise_fraction=args.noise, calibration=args.calibration)
    try:
        sheet = micromagnetic.write_campaign(
            Path(args.out),
            args.ovf,
            acquisition,
            series=args.series,
            seed=args.seed,
            thickness_nm=args.thickness_nm,
            ms_a_per_m=args.ms,
            pixel_size_nm=args.pixel_size_nm,
            relation=args.partner,
        )
    except imagefiles.InputError as exc:
        log.error("%s", exc)
        sys.exit(1)
    log.info("wrote the series of %s and the sheet %s", args.ovf, sheet)


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0."""
    value = float(text)
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def _fail(args: argparse.Namespace, failed) -> None:
    """A series failed (``failed``: its failed Dataset, see :func:`phasepipe.io.failed_dataset`).

    Inside the workflow (``--record-failure``) the failure is written as the stage's output, so
    that it travels to the release summary and the other series go on; run alone, the command
    writes nothing and exits with status 1.
    """
    from phasepipe import io

    log.error("%s", failed.attrs["error"])
    if not args.record_failure:
        sys.exit(1)
    io.write_store(failed, args.out)


def cmd_ingest(args: argparse.Namespace) -> None:
    from phasepipe import configuration, imagefiles, ingest, io, sheet

    microscope = json.loads(args.microscope) if args.microscope else configuration.shipped_defaults()["microscope"]
    try:
        ds = ingest.ingest(sheet.sheet_row(args.sheet, args.series, microscope), microscope)
    except imagefiles.InputError as exc:
        _fail(args, io.failed_dataset(args.series, str(exc), "ingest"))
        return
    io.write_store(ds, args.out)
    log.info("ingested %s: %d images of %s px", args.series, ds.sizes["image"], (ds.sizes["y"], ds.sizes["x"]))


def cmd_align(args: argparse.Namespace) -> None:
    from phasepipe import align, configuration, io

    try:
        settings = align.AlignSettings(**configuration.section("align", json.loads(args.settings)))
    except configuration.ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    ds = io.open_store(args.input).load()
    if io.is_failed(ds):
        _fail(args, ds)
        return
    ds = align.align_dataset(ds, settings)
    for k in range(ds.sizes["image"]):
        log.info(
            "image %d: drift (%.2f, %.2f) px, rotation %.4f deg, scale %.5f, confidence %.2f",
            k,
            ds["shift_y_px"][k],
            ds["shift_x_px"][k],
            ds["rotation_deg"][k],
            ds["scale"][k],
            ds["registration_confidence"][k],
        )
    log.info("pairwise registrations agree with the solution within %.2f px RMS", ds.attrs["alignment_residual_px"])
    io.write_store(ds, args.out)


def cmd_reconstruct(args: argparse.Namespace) -> None:
    import torch

    from phasepipe import cluster, configuration, io, optimise, reconstruct, tilegrid, tiling

    torch.set_num_threads(args.threads)
    section = json.loads(args.settings)
    try:
        settings = reconstruct.settings_from_config(section)
        tiles = tiling.tiling_from_config(section, json.loads(args.dask), args.threads, args.mem_mb)
    except (configuration.ConfigError, cluster.ClusterError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    ds = io.open_store(args.input)
    if io.is_failed(ds):
        _fail(args, ds.load())
        return
    series = ds.attrs["series"]
    level = reconstruct.single_defocus_level(ds["defocus_nominal_nm"].values, settings.refine)
    if level is not None:
        log.warning(
            "%s: a single defocus level besides focus (|defocus| %.4g mm): the refined defocus rests on "
            "non-linear effects (Fresnel fringes of edges), absent from a weak phase; its stated std is a lower "
            'bound (docs/physics.md, "Validation"), and a second defocus level pins it better',
            series,
            level * 1e-6,
        )
    try:
        out = _reconstruct(args, settings, tiles, series)
    except (tilegrid.TilingError, cluster.ClusterError) as exc:
        log.error("%s: %s", series, exc)
        sys.exit(2)
    except optimise.FitDiverged as exc:
        # Like bad input, it fails this series alone, and the failure reaches the release summary.
        _fail(args, io.failed_dataset(series, f"series {series}: {exc}", "reconstruct"))
        return
    log.info(
        "%s: %d iterations in %.1f s, misfit %.3e, defocus %s nm",
        series,
        out.attrs["iterations"],
        out.attrs["seconds"],
        out.attrs["final_loss"],
        [round(float(d)) for d in out["defocus_nm"].values],
    )


def _reconstruct(args: argparse.Namespace, settings, tiles, series: str):
    """Whole or tiled (:func:`phasepipe.tiling.reconstruct_store`), with a bar of iterations or of
    tiles when a person is watching."""
    from phasepipe import tiling

    bars = {}

    def bar(unit: str, total: int | None):
        if unit not in bars:
            bars[unit] = _progress_bar(total, series, unit)
        return bars[unit]

    def iteration(it: int, loss: float) -> None:
        if (shown := bar("it", settings.max_iterations)) is not None:
            shown.update(1)
            if it % 20 == 0:
                shown.set_postfix(misfit=f"{loss:.3e}")

    def tiles_done(done: int, total: int) -> None:
        if (shown := bar("tile", None)) is not None:
            shown.total, shown.n = total, done
            shown.refresh()

    records = args.records or f"{Path(args.out).with_suffix('')}.tiles"
    try:
        return tiling.reconstruct_store(args.input, args.out, records, settings, tiles, iteration, tiles_done)
    finally:
        for shown in bars.values():
            if shown is not None:
                shown.close()


def cmd_separate(args: argparse.Namespace) -> None:
    import torch

    from phasepipe import configuration, partners

    torch.set_num_threads(args.threads)
    try:
        section = configuration.section("reconstruction", json.loads(args.settings))
    except configuration.ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
    group = json.loads(args.group)
    if not len(args.aligned) == len(args.reconstructed) == len(group["members"]):
        log.error("separate: give one aligned and one reconstructed store per member of %s", group["members"])
        sys.exit(2)
    warnings = partners.separate_group(
        group, [Path(p) for p in args.aligned], [Path(p) for p in args.reconstructed], section, Path(args.out)
    )
    if not warnings:
        log.info("separated %s (%s)", ", ".join(group["members"]), group["relation"])


def cmd_aggregate(args: argparse.Namespace) -> None:
    from phasepipe import aggregate, configuration

    try:
        aggregate.aggregate(
            [Path(s) for s in args.stores],
            Path(args.out),
            campaign=args.campaign,
            settings=json.loads(args.settings),
            warnings=json.loads(args.warnings),
        )
    except configuration.ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)


def cmd_release(args: argparse.Namespace) -> None:
    from phasepipe import release

    try:
        release_id = release.publish(
            aggregate_dir=Path(args.aggregate),
            stores=[Path(s) for s in args.stores],
            releases_dir=Path(args.releases),
            name=args.name,
            config=json.loads(args.config),
        )
    except release.ReleaseError as exc:
        log.error("%s", exc)
        sys.exit(2)
    Path(args.out).write_text(json.dumps({"release": release_id}) + "\n")


def cmd_releases(args: argparse.Namespace) -> None:
    from phasepipe import release

    releases = Path(args.releases)
    if args.action == "list":
        print("\t".join(release.INDEX_COLUMNS))
        for row in release.list_releases(releases):
            print("\t".join(row[c] for c in release.INDEX_COLUMNS))
        return
    try:
        diff = release.diff_releases(releases, args.a, args.b)
    except release.ReleaseError as exc:
        log.error("%s", exc)
        sys.exit(2)
    if args.json:
        print(json.dumps(diff, indent=2))
        return
    print(f"{diff['from']} -> {diff['to']}")
    for key in ("added", "removed", "newly_failed"):
        print(f"{key.replace('_', ' ')}: {', '.join(diff[key]) or '-'}")
    print(f"moved beyond 2 sigma: {len(diff['moved'])}")
    for m in diff["moved"]:
        where = f"{m['series']} image {m['image']}"
        print(f"  {where}: {m['parameter']} {m['from']:.6g} -> {m['to']:.6g} (sigma {m['sigma']:.3g})")


def cmd_export(args: argparse.Namespace) -> None:
    from phasepipe import export

    try:
        written = export.export_release(Path(args.release), Path(args.out))
    except FileNotFoundError as exc:
        log.error("%s", exc)
        sys.exit(2)
    for path in written:
        print(path)
    log.info("wrote %d calibrated TIFF maps into %s", len(written), args.out)


def cmd_status(args: argparse.Namespace) -> None:
    from phasepipe import status

    results = Path(args.results)
    series = sorted(p.stem for p in (results / "work" / "ingested").glob("*.zarr"))
    table = status.campaign_table(results, series)
    if table.empty:
        log.error("no campaign under %s (no release, no ingested series)", results)
        sys.exit(2)
    print(status.counts_line(table))
    print(status.format_table(table))


def cmd_inspect(args: argparse.Namespace) -> None:
    from phasepipe import imagefiles

    reports = [imagefiles.inspect_file(path) for path in args.files]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print("\t".join(("path", "format", "shape", "dtype", "pixel_size_nm", "problems")))
        for r in reports:
            shape = " x ".join(map(str, r["shape"])) if r["shape"] else "-"
            pixel = " x ".join(f"{p:g}" for p in r["pixel_size_nm"]) if r["pixel_size_nm"] else "-"
            problems = "; ".join(r["problems"]) if not r["error"] else "unusable"
            print("\t".join((r["path"], r["format"], shape, r["dtype"] or "-", pixel, problems or "ok")))
    bad = [r for r in reports if r["error"]]
    for r in bad:
        print(f"phasepipe inspect: {r['error']}", file=sys.stderr)
    if bad:
        sys.exit(1)


def _record_failure_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--record-failure",
        action="store_true",
        help="when the series fails, write its failure as the output and exit 0 (what the workflow does, so "
        "that the release lists it); without it a failure exits with status 1 and writes nothing",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phasepipe",
        description="Differentiable phase retrieval of Lorentz TEM through-focus series: the workflow's stages.",
    )
    parser.add_argument("--version", action="version", version=f"phasepipe {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a simulated campaign (images, series sheet, ground truth)")
    p.add_argument("out", help="output folder")
    p.add_argument("--demo", action="store_true", help="the built-in demo campaign")
    p.add_argument("--texture", default="vortex", help="vortex | skyrmions | stripes (without --demo)")
    p.add_argument("--series", help="series id (default: the texture, or the --ovf file's name)")
    p.add_argument("--size", type=int, default=256, help="image edge in px")
    p.add_argument("--noise", type=float, default=0.05, help="Gaussian intensity noise fraction")
    p.add_argument("--calibration", type=float, default=1.04, help="true / nominal defocus")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--ovf",
        metavar="FILE",
        help="a micromagnetic state (OVF 1.0/2.0 from mumax3 or OOMMF, text or binary) as the specimen, instead of "
        "a texture: the state is the recorded window, its cell the pixel (not with --demo; --size and --texture "
        "are unused)",
    )
    p.add_argument("--thickness-nm", type=_positive, help="film thickness in nm (with --ovf; default: nz x dz)")
    p.add_argument(
        "--ms",
        type=_positive,
        help="saturation magnetisation in A/m (with --ovf; required when the file holds the unit m, as mumax3 "
        "writes it; default: |M| of a file in A/m, as OOMMF writes it)",
    )
    p.add_argument(
        "--partner",
        choices=("flip", "reference"),
        help="with --ovf: also a partner series <series>_<partner> of the state, turned over (flip) or without "
        "magnetic contrast (reference), rotated and shifted, named in the sheet",
    )
    p.add_argument(
        "--pixel-size-nm", type=_positive, help="image pixel in nm (with --ovf; default: the cell, else resampled)"
    )
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("ingest", help="read and validate one series of the sheet into a Zarr store")
    p.add_argument("--sheet", required=True, help="series sheet (TSV)")
    p.add_argument("--series", required=True, help="series id")
    p.add_argument(
        "--microscope", help="JSON of microscope defaults (config 'microscope'; default: the shipped config's)"
    )
    p.add_argument("--out", required=True, help="output store (.zarr)")
    _record_failure_flag(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("align", help="register the images of an ingested series")
    p.add_argument("--in", dest="input", required=True, help="ingested store")
    p.add_argument("--out", required=True, help="aligned store")
    p.add_argument("--settings", default="{}", help="JSON of the config's 'align' section")
    _record_failure_flag(p)
    p.set_defaults(func=cmd_align)

    p = sub.add_parser("reconstruct", help="fit phase and microscope parameters of an aligned series")
    p.add_argument("--in", dest="input", required=True, help="aligned store")
    p.add_argument("--out", required=True, help="reconstructed store")
    p.add_argument("--settings", default="{}", help="JSON of the config's 'reconstruction' section")
    p.add_argument("--threads", type=int, default=1, help="threads of the job (Dask workers x torch threads)")
    p.add_argument("--mem-mb", type=int, default=None, help="memory of the job in MB (sizes the Dask workers)")
    p.add_argument("--dask", default="{}", help="JSON of the config's 'dask' section")
    p.add_argument(
        "--records",
        help="folder of the finished tiles' records, kept until the output is complete so that a killed run "
        "resumes (default: beside --out, named <out>.tiles)",
    )
    _record_failure_flag(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser(
        "separate", help="fit related series (a flip pair, a reference and its series) jointly: phi_m and phi_e apart"
    )
    p.add_argument("--group", required=True, help="JSON: members (anchor first), relation, roles by series")
    p.add_argument("--aligned", nargs="+", required=True, help="the members' aligned stores, in member order")
    p.add_argument("--reconstructed", nargs="+", required=True, help="their reconstructed stores, in member order")
    p.add_argument("--settings", default="{}", help="JSON of the config's 'reconstruction' section")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", required=True, help="output folder: <series>.zarr for every member")
    p.set_defaults(func=cmd_separate)

    p = sub.add_parser("aggregate", help="campaign tables, statistics and figures from reconstructed stores")
    p.add_argument("--stores", nargs="+", required=True, help="reconstructed stores")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--campaign", default="campaign", help="campaign name")
    p.add_argument("--settings", default="{}", help="JSON of the config's 'aggregate' section")
    p.add_argument("--warnings", default="{}", help="JSON: a warning by series id, added to its quality reasons")
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("release", help="publish an immutable, versioned release")
    p.add_argument("--aggregate", required=True, help="aggregate output folder")
    p.add_argument("--stores", nargs="+", required=True, help="reconstructed stores")
    p.add_argument("--releases", required=True, help="releases folder (results_dir/releases)")
    p.add_argument("--name", default="auto", help="release id, or auto")
    p.add_argument("--config", default="{}", help="JSON of the effective config")
    p.add_argument("--out", required=True, help="file recording the published id")
    p.set_defaults(func=cmd_release)

    p = sub.add_parser(
        "inspect", help="show what ingestion would see in image files (shape, dtype, calibration); writes nothing"
    )
    p.add_argument("files", nargs="+", help="image files (TIFF, DM3/DM4, EMD, MRC, ...)")
    p.add_argument("--json", action="store_true", help="a JSON list, one object per file")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "export", help="write every map of a release's series as a calibrated TIFF (<series>_<variable>.tif)"
    )
    p.add_argument("release", help="a release folder (results/releases/<id>)")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("status", help="the table of series, status, quality and reason of a results folder")
    p.add_argument("results", nargs="?", default="results", help="results_dir of the campaign (default: results)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("releases", help="list published releases, or compare two")
    actions = p.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the catalog (releases/index.csv)")
    listing.add_argument("--releases", default="results/releases", help="releases folder")
    compare = actions.add_parser("diff", help="series added, removed, failed; parameters moved beyond 2 sigma")
    compare.add_argument("a", help="earlier release id")
    compare.add_argument("b", help="later release id")
    compare.add_argument("--releases", default="results/releases", help="releases folder")
    compare.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_releases)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    args.func(args)
