"""The config's paths, resolved against the file that names them, and its one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasepipe import configuration


def _config(**keys) -> dict:
    return {"series_sheet": "demo", "results_dir": "results", **keys}


def test_paths_of_a_config_file_resolve_against_its_folder(tmp_path):
    """series.tsv named by /campaign/config.yaml is /campaign/series.tsv wherever the run starts;
    results_dir left to the shipped default stays in the working directory."""
    campaign, elsewhere = tmp_path / "campaign", tmp_path / "elsewhere"
    campaign.mkdir()
    elsewhere.mkdir()
    (campaign / "config.yaml").write_text("series_sheet: series.tsv\n")
    paths = configuration.resolve_paths(
        _config(series_sheet="series.tsv"), [campaign / "config.yaml"], set(), elsewhere
    )
    assert paths == {"series_sheet": str(campaign / "series.tsv"), "results_dir": "results"}


def test_a_path_inside_the_working_directory_stays_relative(tmp_path):
    (tmp_path / "config.yaml").write_text("series_sheet: data/series.tsv\nresults_dir: out\n")
    config = _config(series_sheet="data/series.tsv", results_dir="out")
    assert configuration.resolve_paths(config, [tmp_path / "config.yaml"], set(), tmp_path) == {
        "series_sheet": "data/series.tsv",
        "results_dir": "out",
    }


def test_the_last_config_file_that_sets_a_path_wins_and_the_command_line_beats_files(tmp_path):
    a, b, cwd = (tmp_path / name for name in ("a", "b", "cwd"))
    for folder in (a, b, cwd):
        folder.mkdir()
    (a / "config.yaml").write_text("series_sheet: s.tsv\nresults_dir: r\n")
    (b / "extra.yaml").write_text("results_dir: r\n")
    config = _config(series_sheet="s.tsv", results_dir="r")
    paths = configuration.resolve_paths(config, [a / "config.yaml", b / "extra.yaml"], set(), cwd)
    assert paths == {"series_sheet": str(a / "s.tsv"), "results_dir": str(b / "r")}
    paths = configuration.resolve_paths(config, [a / "config.yaml"], {"series_sheet"}, cwd)
    assert paths["series_sheet"] == "s.tsv"  # given with --config: the working directory's


def test_demo_stays_demo(tmp_path):
    (tmp_path / "c.yaml").write_text("series_sheet: demo\n")
    assert configuration.resolve_paths(_config(), [tmp_path / "c.yaml"], set(), Path("/"))["series_sheet"] == "demo"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reconstruction": {"tile_pix": 1}}, "unknown key 'reconstruction.tile_pix'; did you mean 'tile_px'?"),
        ({"zzz": 1}, "unknown key 'zzz'; valid keys here: campaign,"),
        ({"microscope": {"voltage_kv": 300000}}, "'microscope.voltage_kv' is 300000, outside the range 20 to 3000"),
        ({"reconstruction": {"iterations": 0}}, "'reconstruction.iterations' is 0; allowed: 'auto' or an integer >= 1"),
        ({"reconstruction": {"device": "gpu"}}, "'reconstruction.device' is 'gpu'; allowed: 'auto', 'cpu', 'cuda'"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_key(change, message):
    config = configuration.shipped_defaults()
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
    with pytest.raises(configuration.ConfigError) as info:
        configuration.validate(config)
    text = str(info.value)
    assert "\n" not in text and text.startswith("Error validating config file: ")
    assert message in text, text


def test_the_shipped_defaults_are_valid():
    config = configuration.shipped_defaults()
    configuration.validate(config)
    assert config["strict"] is False and config["microscope"]["voltage_kv"] == 200
