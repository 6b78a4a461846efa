"""What the docs say, read the way a user reads them: the README's commands, and the names
docs/outputs.md documents (from its tables), to compare with what a run writes."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "outputs.md"
TILED = "tiled fields only"
SEPARATED = "separated series only"


def readme_command(section: str) -> str:
    """The snakemake command of a README section, as a user copies it (continuation lines joined),
    with the README's ``~/phasepipe`` (where the user cloned phasepipe) made this checkout."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    command = re.search(r"^(~/phasepipe/\.venv/bin/snakemake .*?)(?<!\\)$", body, re.M | re.S)
    assert command, f"no snakemake command in the README's section {section!r}"
    return command.group(1).replace("\\\n", " ").replace("~/phasepipe", str(ROOT))


def section(title: str) -> str:
    """The text of the ``##`` or ``###`` section of that title, up to the next heading."""
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ |\Z)", DOC.read_text(), re.M | re.S)
    assert match, f"docs/outputs.md has no section {title!r}"
    return match.group(1)


def documented(title: str, marker: str = TILED) -> tuple[set[str], set[str]]:
    """The names in the first column of a section's table: (all of them, those whose row says
    ``marker``: only tiled fields' or only separated series' stores have them).

    A cell may list several names (```a`, `b```); a name starting with '.' is a sibling of the
    cell's first name (```c.mean`, `.std``` is c.mean and c.std).
    """
    names: set[str] = set()
    tiled: set[str] = set()
    for line in section(title).splitlines():
        if not line.startswith("| `"):
            continue
        first, rest = line[2:].split(" | ", 1)
        cell = re.findall(r"`([^`]+)`", first)
        parent = cell[0].rsplit(".", 1)[0]
        found = {parent + name if name.startswith(".") else name for name in cell}
        names |= found
        if marker in rest:
            tiled |= found
    return names, tiled


def flatten(
    value, prefix: str = "", placeholders: dict[str, str] | None = None, leaves: tuple[str, ...] = ()
) -> set[str]:
    """Dotted key paths of a JSON value: lists of objects as ``key[].field``; the keys of an object
    whose path is in ``placeholders`` replaced by its placeholder (``sessions`` -> ``<session>``);
    paths in ``leaves`` not descended into."""
    placeholders = placeholders or {}
    if prefix in leaves:
        return {prefix}
    if isinstance(value, dict):
        keys = set()
        for key, item in value.items():
            name = placeholders.get(prefix, key)
            keys |= flatten(item, f"{prefix}.{name}" if prefix else name, placeholders, leaves)
        return keys
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return set().union(*(flatten(v, f"{prefix}[]", placeholders, leaves) for v in value))
    return {prefix}


if __name__ == "__main__":  # tests/cluster/run.sh: the command of the section named
    import sys

    print(readme_command(sys.argv[1]))
