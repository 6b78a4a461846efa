"""The series sheet: one tab-separated row per through-focus series, read and checked up front.

Two kinds of problem are told apart. A sheet that cannot be read as a whole (not tab-separated,
a missing or unknown column, a bad or duplicate series id) is refused before any job starts.
A row whose values no LTEM series can have (defocus in mm typed as nm, a voltage in V, a pixel
size out of range) keeps its place: its series fails at ingestion, before any of its work, with
the sheet, line, column and likely mistake named, and the other series run. A partner relation
that cannot be used (:func:`partner_groups`) is neither: its series is reconstructed alone.
"""

from __future__ import annotations

import csv
import functools
import glob
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from phasepipe import physics
from phasepipe.configuration import SCHEMA_DIR, violation
from phasepipe.imagefiles import UNIT_TO_NM, InputError

# A series (and a release) id: a letter or digit, then letters, digits, _ . -
SERIES_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

REQUIRED_COLUMNS = ("series", "files", "defocus_nm")
MICROSCOPE_COLUMNS = ("voltage_kv", "cs_mm", "beam_divergence_mrad", "defocus_spread_nm")
OPTIONAL_COLUMNS = ("pixel_size_nm", *MICROSCOPE_COLUMNS, "acquired", "session", "truth", "partner", "relation")
RELATIONS = ("flip", "reference")
LENGTH = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([^\d\s.+-][^\s]*)?\s*$")


@dataclass(frozen=True)
class SeriesRow:
    """One row of the series sheet; ``problem`` says why its series cannot be reduced (else "")."""

    series: str
    files: str
    defocus_nm: tuple[float, ...]
    sheet_dir: Path
    pixel_size_nm: float | None = None
    microscope: dict[str, float] = field(default_factory=dict)
    acquired: str = ""
    session: str = ""
    truth: str = ""
    partner: str = ""
    relation: str = ""
    problem: str = ""

    def paths(self) -> list[Path]:
        """Image files of the series: a ';' list or globs, relative to the sheet, sorted naturally."""
        paths: list[Path] = []
        for part in (p.strip() for p in self.files.split(";")):
            if not part:
                continue
            if glob.has_magic(part):
                # Only the sheet's own entry is a pattern: the folder it lives in is taken literally.
                pattern = str(Path(glob.escape(str(self.sheet_dir))) / part)
                matches = sorted(glob.glob(pattern), key=_natural_key)
            else:
                matches = [str(self.sheet_dir / part)]
            if not matches:
                raise InputError(f"series {self.series}: no file matches {part!r}")
            paths.extend(Path(m) for m in matches)
        if not paths:
            raise InputError(f"series {self.series}: the files column names no file: {self.files!r}")
        return paths


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def parse_length_nm(text: str) -> float:
    """A length as a person writes it, in nm: ``-1.6mm``, ``800um``, ``800 µm``, ``-500nm``, or a
    bare number (nm). Raises ValueError for anything else."""
    match = LENGTH.match(text)
    if not match:
        raise ValueError(f"{text.strip()!r} is not a length")
    number, unit = match.groups()
    if unit is None:
        return float(number)
    factor = UNIT_TO_NM.get(unit.lower())
    if factor is None:
        raise ValueError(f"{text.strip()!r}: unknown unit {unit!r} (nm, um, µm or mm)")
    return float(number) * factor


def defocus_problem(defocus_nm: tuple[float, ...], pixel_size_nm: float, voltage_kv: float) -> str:
    """Why a nominal defocus list cannot be a through-focus series' at this pixel size ("" if it can).

    A defocus forms contrast over its Fresnel length sqrt(lambda |df|); when that of the largest
    |defocus| is below one pixel, no image of the series shows any, which is what mm or um typed
    as nm give (1.6 mm typed as nm: 0.06 nm at 200 kV, against pixels of a few nm).
    """
    largest = max(abs(d) for d in defocus_nm)
    if largest == 0:
        return "every image is at defocus 0: a through-focus series needs defocused images"
    fresnel = math.sqrt(physics.wavelength_nm(voltage_kv * 1e3) * largest)
    if fresnel >= pixel_size_nm:
        return ""
    return (
        f"did you give mm or um in defocus_nm? The largest |defocus|, {largest:g} nm, spreads a point over "
        f"sqrt(lambda |defocus|) = {fresnel:.2g} nm, less than one {pixel_size_nm:g} nm pixel: no image would show "
        "contrast. Write the unit (-1.6mm, 800um) or the value in nm"
    )


@functools.cache
def _row_validator():
    """The validator of a parsed row (workflow/schemas/sheet.schema.yaml and what it refers to)."""
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schemas = {p.name: yaml.safe_load(p.read_text()) for p in SCHEMA_DIR.glob("*.schema.yaml")}
    registry = Registry().with_resources((name, Resource.from_contents(s)) for name, s in schemas.items())
    return Draft202012Validator(schemas["sheet.schema.yaml"], registry=registry)


def _check_delimiter(path: Path, header: str) -> None:
    """Refuse a sheet that is not tab-separated, saying what it looks like instead."""
    if "\t" in header:
        return
    for name, sep in (("comma", ","), ("semicolon", ";")):
        if header.count(sep) >= len(REQUIRED_COLUMNS) - 1 and "series" in header:
            raise InputError(
                f"series sheet {path}, line 1: the header is {name}-separated; the sheet must be tab-separated "
                "(TSV: save it from a spreadsheet as 'Text (tab delimited)')"
            )
    if len(header.split()) > 1:
        raise InputError(
            f"series sheet {path}, line 1: the columns are separated by spaces; the sheet must be tab-separated (TSV)"
        )


def read_sheet(path: str | Path, microscope: dict[str, float] | None = None) -> list[SeriesRow]:
    """Parse a series sheet (TSV) into its rows.

    Raises :class:`InputError` naming the sheet, line and column for what refuses the whole sheet;
    a row's implausible values go into its ``problem`` instead. ``microscope``: the config's
    defaults, for the defocus check of rows that give their pixel size.
    """
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        _check_delimiter(path, fh.readline())
        fh.seek(0)
        reader = csv.DictReader(fh, delimiter="\t")
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise InputError(f"series sheet {path}, line 1: missing required column(s) {', '.join(missing)}")
        unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if unknown:
            raise InputError(
                f"series sheet {path}, line 1: unknown column(s) {', '.join(unknown)} "
                f"(allowed: {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)})"
            )
        rows: list[SeriesRow] = []
        seen: dict[str, int] = {}
        for raw in reader:
            line = reader.line_num
            if None in raw:  # csv puts fields beyond the header under the key None
                raise InputError(f"series sheet {path}, line {line}: more fields than the header has columns")
            raw = {k: (v or "").strip() for k, v in raw.items()}
            if not any(raw.values()):
                continue  # a blank line
            sid = raw["series"]
            if not SERIES_ID.match(sid):
                raise InputError(
                    f"series sheet {path}, line {line}, column series: id {sid!r} is not allowed "
                    "(letters, digits, '_', '.', '-', starting with a letter or digit)"
                )
            if sid in seen:
                raise InputError(
                    f"series sheet {path}, line {line}, column series: duplicate id {sid!r} (first on line {seen[sid]})"
                )
            seen[sid] = line
            rows.append(_row(raw, path, line, microscope or {}))
    if not rows:
        raise InputError(f"series sheet {path}: no series")
    return rows


def _row(raw: dict[str, str], path: Path, line: int, defaults: dict[str, float]) -> SeriesRow:
    """One row, its values parsed; the first implausible value becomes its ``problem``."""
    sid = raw["series"]
    problems: list[tuple[str, str]] = []  # (column, what is wrong)
    values: dict = {}
    if not raw["files"]:
        problems.append(("files", "is empty"))
    try:
        values["defocus_nm"] = [parse_length_nm(v) for v in raw["defocus_nm"].split(",") if v.strip()]
        if not all(math.isfinite(d) for d in values["defocus_nm"]):
            problems.append(("defocus_nm", "must be finite numbers"))
    except ValueError as exc:
        problems.append(("defocus_nm", str(exc)))
    for column in ("pixel_size_nm", *MICROSCOPE_COLUMNS):
        if raw.get(column):
            try:
                values[column] = float(raw[column])
            except ValueError:
                problems.append((column, f"{raw[column]!r} is not a number"))
    for error in _row_validator().iter_errors(values):
        problems.append((str(error.absolute_path[0]), violation(error)))
    microscope = {c: values[c] for c in MICROSCOPE_COLUMNS if c in values}
    voltage = microscope.get("voltage_kv", defaults.get("voltage_kv"))
    if not problems and "pixel_size_nm" in values and voltage is not None:
        if problem := defocus_problem(tuple(values["defocus_nm"]), values["pixel_size_nm"], voltage):
            problems.append(("defocus_nm", problem))
    problem = ""
    if problems:
        column, what = problems[0]
        problem = f"series {sid}: column {column} (series sheet {path}, line {line}): {what}"
    return SeriesRow(
        series=sid,
        files=raw["files"],
        defocus_nm=tuple(values.get("defocus_nm", ())),
        sheet_dir=path.parent,
        pixel_size_nm=values.get("pixel_size_nm"),
        microscope=microscope,
        acquired=raw.get("acquired", ""),
        session=raw.get("session", ""),
        truth=raw.get("truth", ""),
        partner=raw.get("partner", ""),
        relation=raw.get("relation", "").lower(),
        problem=problem,
    )


def sheet_row(path: str | Path, series: str, microscope: dict[str, float] | None = None) -> SeriesRow:
    """The row of one series."""
    for row in read_sheet(path, microscope):
        if row.series == series:
            return row
    raise InputError(f"series sheet {path}: no series {series!r}")


@dataclass(frozen=True)
class Group:
    """Series of one area fitted jointly: a flip pair, or a reference and the series it serves.

    ``anchor``: the series whose frame the joint fit works in (a flip pair's first in the sheet,
    else the reference); ``members``: the anchor, then the others in sheet order; ``relation``:
    ``flip`` or ``reference``.
    """

    anchor: str
    members: tuple[str, ...]
    relation: str

    @property
    def id(self) -> str:
        """The members joined by '+', anchor first: a wildcard and folder name no series id can have."""
        return "+".join(self.members)

    def role(self, series: str) -> str:
        """``reference`` (no magnetic contrast), ``flip`` (turned over: phi_m reversed, image mirrored)
        or ``magnetic`` (phi_e + phi_m as imaged)."""
        if series not in self.members:
            raise KeyError(f"series {series} is not in group {self.id}")
        if self.relation == "reference":
            return "reference" if series == self.anchor else "magnetic"
        return "magnetic" if series == self.anchor else "flip"


def _partner_warning(row: SeriesRow, rows: dict[str, SeriesRow]) -> str:
    """Why the partner relation of a row that declares one cannot be used ("" if it can)."""
    sid, partner, relation = row.series, row.partner, row.relation
    alone = f"; {sid} is reconstructed alone"
    if not partner:
        return f"series {sid}: column relation is {relation!r} but column partner is empty{alone}"
    if partner == sid:
        return f"series {sid}: column partner names {sid} itself{alone}"
    if partner not in rows:
        return f"series {sid}: column partner names {partner!r}, which is not a series of the sheet{alone}"
    if relation not in RELATIONS:
        given = f"is {relation!r}" if relation else "is empty"
        return (
            f"series {sid}: column relation {given} for partner {partner}; it must be flip (the partner is the "
            f"specimen turned over) or reference (the partner holds no magnetic contrast){alone}"
        )
    other = rows[partner]
    if other.problem:
        return f"series {sid}: its partner {partner} fails at ingestion (a value of its row is wrong){alone}"
    if relation == "flip" and (other.partner, other.relation) != (sid, "flip"):
        names = f"names {other.partner} as {other.relation or 'no relation'}" if other.partner else "names no partner"
        return f"series {sid}: its flip partner {partner} {names}; a flip pair names each other, both rows flip{alone}"
    if relation == "reference" and (other.partner or other.relation):
        return (
            f"series {sid}: its reference {partner} names a partner of its own ({other.partner or 'none'}, relation "
            f"{other.relation or 'none'}); a reference has none, and a flip pair with a reference as well is out "
            f"of scope for now{alone}"
        )
    return ""


def partner_groups(rows: list[SeriesRow]) -> tuple[list[Group], dict[str, str]]:
    """The groups of related series, and a warning for each series whose partner relation is unusable.

    A flip pair names each other (both rows ``flip``); a reference is named by the series it serves
    (``reference``) and names no partner. A relation that breaks this (a partner missing, itself,
    failing at ingestion or naming a third series, an unknown relation) is no reason to fail the
    series: it is reconstructed alone, the warning naming it and its partner. Rows with a problem
    fail anyway and get no warning; series in no group and with no warning are simply alone.
    Groups come in the sheet order of their anchors.
    """
    by_id = {row.series: row for row in rows}
    order = {row.series: k for k, row in enumerate(rows)}
    warnings: dict[str, str] = {}
    for row in rows:
        if not row.problem and (row.partner or row.relation):
            if warning := _partner_warning(row, by_id):
                warnings[row.series] = warning
    served: dict[str, list[str]] = {}
    pairs: set[tuple[str, str]] = set()
    for row in rows:
        if row.problem or not row.partner or row.series in warnings:
            continue
        if row.relation == "reference":
            served.setdefault(row.partner, []).append(row.series)
        else:
            pairs.add(tuple(sorted((row.series, row.partner), key=order.__getitem__)))
    groups = [Group(a, (a, b), "flip") for a, b in pairs]
    groups += [Group(r, (r, *members), "reference") for r, members in served.items()]
    return sorted(groups, key=lambda g: order[g.anchor]), warnings
