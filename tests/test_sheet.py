"""The series sheet: what refuses the whole sheet, and what fails one series before its work."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasepipe import imagefiles, sheet

HEADER = "series\tfiles\tdefocus_nm"
MICROSCOPE = {"voltage_kv": 200.0}


def _sheet(folder: Path, text: str, name: str = "series.tsv") -> Path:
    """Write a TSV sheet from lines whose fields are separated by '|' (easier to read than tabs)."""
    path = folder / name
    path.write_text(text.replace("|", "\t"))
    return path


def _rows(folder: Path, text: str) -> dict[str, sheet.SeriesRow]:
    return {row.series: row for row in sheet.read_sheet(_sheet(folder, text), MICROSCOPE)}


def test_read_sheet_parses_a_good_sheet(tmp_path):
    """Every column is parsed: defocus to floats, pixel size, microscope overrides, session, acquired."""
    first, second = sheet.read_sheet(
        _sheet(
            tmp_path,
            "series|files|defocus_nm|pixel_size_nm|voltage_kv|cs_mm|session|acquired\n"
            "s1|s1.tif|-1600000, 0 ,1.6e6|2.5|300||day1|2026-03-02T10:15:00\n"
            "s2.b-c_d|img*.tif|-8e5,0,8e5|||1.2||\n",
        )
    )
    assert (first.series, first.files, first.defocus_nm) == ("s1", "s1.tif", (-1.6e6, 0.0, 1.6e6))
    assert all(isinstance(d, float) for d in first.defocus_nm)
    assert first.pixel_size_nm == 2.5
    assert first.microscope == {"voltage_kv": 300.0}
    assert (first.session, first.acquired, first.sheet_dir) == ("day1", "2026-03-02T10:15:00", tmp_path)
    assert (second.series, second.defocus_nm, second.pixel_size_nm) == ("s2.b-c_d", (-8e5, 0.0, 8e5), None)
    assert second.microscope == {"cs_mm": 1.2}
    assert (second.session, second.acquired) == ("", "")
    assert first.problem == second.problem == ""


@pytest.mark.parametrize(
    ("text", "nm"),
    [
        ("-1.6mm", -1.6e6),
        ("800um", 8e5),
        ("800 µm", 8e5),  # micro sign
        ("800μm", 8e5),  # Greek mu
        ("-500nm", -500.0),
        ("1.6e6", 1.6e6),
        (" 0 ", 0.0),
        ("+.5mm", 5e5),
    ],
)
def test_parse_length_takes_the_units_people_write(text, nm):
    assert sheet.parse_length_nm(text) == pytest.approx(nm)


@pytest.mark.parametrize("text", ["1.6 furlongs", "zero", "1.6mm2", "", "1,6mm"])
def test_parse_length_refuses_what_is_not_a_length(text):
    with pytest.raises(ValueError):
        sheet.parse_length_nm(text)


def test_defocus_in_units_reads_as_nm(tmp_path):
    """-1.6mm,0,1.6mm and -1600um,0,1600um are the same series as -1600000,0,1600000."""
    rows = _rows(tmp_path, f"{HEADER}\na|a.tif|-1.6mm,0,1.6mm\nb|b.tif|-1600um,0,1600µm\nc|c.tif|-1600000,0,1.6e6\n")
    assert rows["a"].defocus_nm == rows["b"].defocus_nm == rows["c"].defocus_nm == (-1.6e6, 0.0, 1.6e6)


@pytest.mark.parametrize(
    ("defocus", "pixel_nm", "flagged"),
    [
        ((-1.6, 0.0, 1.6), 5.0, True),  # mm typed as nm
        ((-1600.0, 0.0, 1600.0), 5.0, True),  # um typed as nm
        ((-1.6e6, 0.0, 1.6e6), 5.0, False),
        ((-1600.0, 0.0, 1600.0), 1.0, False),  # 1600 nm is a real defocus at 1 nm pixels
        ((0.0, 0.0), 5.0, True),  # no defocused image at all
    ],
)
def test_defocus_that_forms_no_contrast_is_named(defocus, pixel_nm, flagged):
    """The Fresnel length sqrt(lambda |df|) of the largest defocus below one pixel: no contrast."""
    problem = sheet.defocus_problem(defocus, pixel_nm, 200.0)
    assert bool(problem) == flagged
    if flagged and any(defocus):
        assert "did you give mm or um in defocus_nm" in problem


@pytest.mark.parametrize(
    ("columns", "values", "expected"),
    [
        ("pixel_size_nm", "5", ["column defocus_nm", "line 2", "did you give mm or um"]),  # -1.6,0,1.6
        ("voltage_kv", "200000", ["column voltage_kv", "line 2", "200000", "20 to 3000", "given in V?"]),
        ("cs_mm", "1000", ["column cs_mm", "0 to 20"]),
        ("pixel_size_nm", "0", ["column pixel_size_nm", "0.001 to 1000"]),
        ("pixel_size_nm", "-2.5", ["column pixel_size_nm"]),
        ("pixel_size_nm", "5e-9", ["column pixel_size_nm", "given in another unit?"]),
        ("voltage_kv", "high", ["column voltage_kv", "'high' is not a number"]),
    ],
)
def test_an_implausible_row_fails_its_own_series_only(tmp_path, columns, values, expected):
    """A value no LTEM series can have becomes the row's problem (sheet, line, column, likely
    mistake); the sheet is still read and the other rows are fine."""
    rows = _rows(tmp_path, f"{HEADER}|{columns}\nbad|a.tif|-1.6,0,1.6|{values}\ngood|b.tif|-1.6mm,0,1.6mm|\n")
    assert rows["good"].problem == ""
    message = rows["bad"].problem.replace(str(tmp_path), "<dir>")
    assert message.startswith("series bad: ") and "series.tsv" in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


@pytest.mark.parametrize(
    ("defocus", "expected"),
    [
        ("-1,zero,1", "'zero' is not a length"),
        (" , ", "is empty"),
        ("nan,0,1", "'nan' is not a length"),
        ("1e999,0", "finite"),
        ("1,2ft", "ft"),
    ],
)
def test_a_defocus_list_that_does_not_parse_fails_its_series(tmp_path, defocus, expected):
    rows = _rows(tmp_path, f"{HEADER}\ns1|a.tif|{defocus}\n")
    assert "column defocus_nm" in rows["s1"].problem and expected in rows["s1"].problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("series|files\ns1|s1.tif\n", ["line 1", "missing required column", "defocus_nm"], id="missing"),
        pytest.param(f"{HEADER}|colour\ns1|s1.tif|-1,0,1|red\n", ["line 1", "unknown column", "colour"], id="unknown"),
        pytest.param(f"{HEADER}\ns1|a.tif|-1,0,1\n../evil|b.tif|-1,0,1\n", ["line 3", "'../evil'"], id="dotdot-id"),
        pytest.param(f"{HEADER}\na/b|b.tif|-1,0,1\n", ["line 2", "column series", "'a/b'"], id="slash-id"),
        pytest.param(f"{HEADER}\n-x|b.tif|-1,0,1\n", ["line 2", "'-x'"], id="dash-id"),
        pytest.param(
            f"{HEADER}\ns1|a.tif|-1,0,1\ns2|b.tif|-1,0,1\ns1|c.tif|-1,0,1\n",
            ["duplicate", "'s1'", "line 4", "line 2"],
            id="duplicate-id",
        ),
        pytest.param(f"{HEADER}\ns1|a.tif|-1,0,1|oops\n", ["line 2", "more fields"], id="extra-field"),
        pytest.param(f"{HEADER}\n", ["no series"], id="header-only"),
        pytest.param("", ["missing required column"], id="empty-file"),
        pytest.param("series,files,defocus_nm\ns1,a.tif,-1.6mm\n", ["comma-separated", "tab-separated"], id="csv"),
        pytest.param("series;files;defocus_nm\ns1;a.tif;-1.6mm\n", ["semicolon-separated"], id="semicolon"),
        pytest.param("series  files  defocus_nm\ns1  a.tif  -1.6mm\n", ["separated by spaces"], id="spaces"),
    ],
)
def test_read_sheet_refuses_bad_sheets(tmp_path, text, expected):
    """A sheet that cannot be read as a whole raises InputError naming the sheet, line and problem."""
    path = _sheet(tmp_path, text)
    with pytest.raises(imagefiles.InputError) as info:
        sheet.read_sheet(path)
    message = str(info.value)
    assert f"series sheet {path}" in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_blank_lines_and_a_spreadsheet_bom_are_ignored(tmp_path):
    path = tmp_path / "series.tsv"
    path.write_bytes("\ufeffseries\tfiles\tdefocus_nm\ns1\ta.tif\t-1.6mm,0,1.6mm\n\t\t\n\n".encode())
    (row,) = sheet.read_sheet(path)
    assert row.series == "s1" and row.problem == ""


def _row(tmp_path: Path, files: str) -> sheet.SeriesRow:
    return sheet.SeriesRow(series="s1", files=files, defocus_nm=(-1.6e6, 0.0, 1.6e6), sheet_dir=tmp_path)


def test_paths_semicolon_list_keeps_the_given_order(tmp_path):
    """'c; a ;b' lists three files relative to the sheet, in the order written, spaces stripped."""
    assert _row(tmp_path, "c.tif; a.tif ;b.tif").paths() == [tmp_path / "c.tif", tmp_path / "a.tif", tmp_path / "b.tif"]


def test_paths_glob_sorted_naturally(tmp_path):
    """A glob's matches are sorted naturally: img2 before img10 (plain sorting would put img10 first)."""
    for k in (10, 1, 2):
        (tmp_path / f"img{k}.tif").write_bytes(b"")
    (tmp_path / "other.tif").write_bytes(b"")
    assert _row(tmp_path, "img*.tif").paths() == [tmp_path / f"img{k}.tif" for k in (1, 2, 10)]
    assert _row(tmp_path, "other.tif;img1?.tif").paths() == [tmp_path / "other.tif", tmp_path / "img10.tif"]


def test_paths_glob_without_match_names_the_series(tmp_path):
    """A glob matching nothing raises InputError naming the series and the pattern."""
    with pytest.raises(imagefiles.InputError, match=r"series s1: .*'nothing\*\.tif'"):
        _row(tmp_path, "nothing*.tif").paths()


def test_paths_glob_in_a_folder_with_brackets(tmp_path):
    """Only the sheet's files column is a pattern; its folder name is taken literally."""
    folder = tmp_path / "run[1]"
    folder.mkdir()
    (folder / "img1.tif").write_bytes(b"")
    assert _row(folder, "img*.tif").paths() == [folder / "img1.tif"]


PARTNERS = f"{HEADER}|partner|relation\n"


def _groups(folder: Path, text: str) -> tuple[dict[str, sheet.Group], dict[str, str], dict[str, sheet.SeriesRow]]:
    """The groups by id, the warnings and the rows of a sheet with partner and relation columns."""
    rows = sheet.read_sheet(_sheet(folder, PARTNERS + text), MICROSCOPE)
    groups, warnings = sheet.partner_groups(rows)
    return {g.id: g for g in groups}, warnings, {row.series: row for row in rows}


def test_partner_columns_are_optional_and_parsed(tmp_path):
    """An old sheet still reads, partner fields empty; relation is stripped and lower-cased."""
    rows = _rows(tmp_path, f"{HEADER}\na|a.tif|-1.6mm,0,1.6mm\n")
    assert (rows["a"].partner, rows["a"].relation) == ("", "")
    assert sheet.partner_groups(list(rows.values())) == ([], {})
    _, _, rows = _groups(tmp_path, "a|a.tif|-1.6mm,0,1.6mm| b | Flip \nb|b.tif|-1.6mm,0,1.6mm|a|FLIP\n")
    assert (rows["a"].partner, rows["a"].relation, rows["b"].relation) == ("b", "flip", "flip")


def test_a_flip_pair_is_one_group_anchored_on_its_first_row(tmp_path):
    """Both rows name each other as flip: one group, the first of the two in the sheet its anchor."""
    groups, warnings, _ = _groups(
        tmp_path,
        "alone|x.tif|-1.6mm,0,1.6mm||\nup|u.tif|-1.6mm,0,1.6mm|down|flip\ndown|d.tif|-1.6mm,0,1.6mm|up|flip\n",
    )
    assert warnings == {}
    (group,) = groups.values()
    assert (group.id, group.anchor, group.members, group.relation) == ("up+down", "up", ("up", "down"), "flip")
    assert (group.role("up"), group.role("down")) == ("magnetic", "flip")
    with pytest.raises(KeyError):
        group.role("alone")
    # The other way round in the sheet, the other anchor.
    groups, _, _ = _groups(tmp_path, "down|d.tif|-1.6mm,0,1.6mm|up|flip\nup|u.tif|-1.6mm,0,1.6mm|down|flip\n")
    assert list(groups) == ["down+up"] and groups["down+up"].anchor == "down"


def test_a_reference_serving_two_series_is_one_group(tmp_path):
    """A reference named by two series: one group, the reference first, the others in sheet order."""
    groups, warnings, _ = _groups(
        tmp_path,
        "m2|b.tif|-1.6mm,0,1.6mm|ref|reference\nref|r.tif|-1.6mm,0,1.6mm||\nm1|a.tif|-1.6mm,0,1.6mm|ref|Reference\n",
    )
    assert warnings == {}
    (group,) = groups.values()
    assert (group.id, group.anchor, group.members, group.relation) == (
        "ref+m2+m1",
        "ref",
        ("ref", "m2", "m1"),
        "reference",
    )
    assert [group.role(s) for s in group.members] == ["reference", "magnetic", "magnetic"]
    assert all("+" not in s and sheet.SERIES_ID.match(s) for s in group.members)


# A flip pair and a reference group, which every bad case below leaves as they are.
GOOD = (
    "p|p.tif|-1.6mm,0,1.6mm|q|flip\n"
    "q|q.tif|-1.6mm,0,1.6mm|p|flip\n"
    "r|r.tif|-1.6mm,0,1.6mm||\n"
    "s|s.tif|-1.6mm,0,1.6mm|r|reference\n"
)


@pytest.mark.parametrize(
    ("text", "warned", "expected"),
    [
        pytest.param("a|a.tif|-1.6mm,0,1.6mm|nobody|flip\n", ["a"], ["'nobody'", "not a series"], id="missing"),
        pytest.param("a|a.tif|-1.6mm,0,1.6mm|a|flip\n", ["a"], ["names a itself"], id="itself"),
        pytest.param(
            "a|a.tif|-1.6mm,0,1.6mm|b|mirror\nb|b.tif|-1.6mm,0,1.6mm|a|flip\n",
            ["a", "b"],
            ["'mirror'", "partner b", "flip", "reference"],
            id="unknown-relation",
        ),
        pytest.param("a|a.tif|-1.6mm,0,1.6mm|r|\n", ["a"], ["relation is empty", "partner r"], id="no-relation"),
        pytest.param("a|a.tif|-1.6mm,0,1.6mm||flip\n", ["a"], ["'flip'", "partner is empty"], id="no-partner"),
        pytest.param(
            "a|a.tif|-1.6mm,0,1.6mm|b|flip\nb|b.tif|-1.6mm,0,1.6mm|c|flip\nc|c.tif|-1.6mm,0,1.6mm|b|flip\n",
            ["a"],
            ["flip partner b", "names c as flip", "each other"],  # b and c, a flip pair, stay one
            id="third-series",
        ),
        pytest.param(
            "a|a.tif|-1.6mm,0,1.6mm|b|flip\nb|b.tif|-1.6mm,0,1.6mm||\n",
            ["a"],
            ["flip partner b", "names no partner"],
            id="flip-one-way",
        ),
        pytest.param(
            "a|a.tif|-1.6mm,0,1.6mm|b|flip\nb|b.tif|-1.6mm,0,1.6mm|a|reference\n",
            ["a", "b"],
            ["b"],
            id="flip-against-reference",
        ),
        pytest.param(
            "a|a.tif|-1.6mm,0,1.6mm|p|reference\n",
            ["a"],
            ["reference p", "names a partner of its own", "q", "out of scope"],
            id="reference-with-partner",
        ),
        pytest.param(
            "a|a.tif|-1.6mm,0,1.6mm|bad|flip\nbad|b.tif|-1,zero,1|a|flip\nc|c.tif|-1.6mm,0,1.6mm|bad|reference\n",
            ["a", "c"],
            ["partner bad", "fails at ingestion"],
            id="partner-fails",
        ),
    ],
)
def test_an_unusable_partner_leaves_the_series_alone(tmp_path, text, warned, expected):
    """Each bad partner relation warns its series, naming it and its partner: no row problem, no
    group for it, and the good groups of the same sheet still form."""
    rows = sheet.read_sheet(_sheet(tmp_path, PARTNERS + GOOD + text), MICROSCOPE)
    groups, warnings = sheet.partner_groups(rows)
    assert sorted(warnings) == sorted(warned)
    for sid in warned:
        message = warnings[sid]
        assert message.startswith(f"series {sid}: ") and message.endswith(f"{sid} is reconstructed alone")
        for part in expected if sid == warned[0] else []:
            assert part in message, f"{part!r} not in {message!r}"
    problems = {row.series: row.problem for row in rows if row.problem}
    assert not set(problems) & set(warned)
    assert list(problems) == (["bad"] if "bad|" in text else [])
    assert [g.id for g in groups][:2] == ["p+q", "r+s"]
    assert not {s for g in groups for s in g.members} & {*warned, *problems}
