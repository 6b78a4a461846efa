"""Image files: reading what microscopes write, and writing calibrated TIFF.

TIFF through tifffile, the vendors' formats (DM3/DM4, EMD, MRC) through rosettasciio; each
reader returns the image stack, the pixel size in nm where the file states one, and the
acquisition metadata the file carries. :func:`inspect_file` shows what ingestion would see.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import tifffile

UNIT_TO_NM = {
    "pm": 1e-3,
    "a": 0.1,
    "å": 0.1,
    "angstrom": 0.1,
    "nm": 1.0,
    "um": 1e3,
    "µm": 1e3,  # micro sign U+00B5, as DigitalMicrograph writes it
    "μm": 1e3,  # Greek mu U+03BC, the other spelling found in headers
    "micron": 1e3,
    "mm": 1e6,
    "m": 1e9,
}
# rosettasciio modules for the formats the SPEC names; MRC is listed by both the MRC and the MRCZ
# plugin, so the explicit choice keeps plain MRC files away from the compressed-MRC reader.
RSCIIO_MODULES = {
    ".dm3": "rsciio.digitalmicrograph",
    ".dm4": "rsciio.digitalmicrograph",
    ".emd": "rsciio.emd",
    ".mrc": "rsciio.mrc",
}


class InputError(ValueError):
    """Bad input: the message names the series, the file and what is wrong."""


def sha256_file(path: str | Path) -> str:
    """The file's SHA-256, hex: how a release names what it holds (read in blocks by hashlib)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_tiff(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, dict]:
    """Image data, pixel size (y, x) in nm (None if uncalibrated) and metadata of a TIFF file."""
    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        meta = tif.imagej_metadata or {}
        page = tif.pages[0]
        unit = str(meta.get("unit", "")).strip().lower()
        expected = int(meta.get("images", 1))
        resolution = [page.tags.get(name) for name in ("YResolution", "XResolution")]
    frames = data.shape[0] if data.ndim == 3 else 1
    if frames < expected:
        # tifffile falls back to the pages it can read: a short stack is a damaged file.
        raise InputError(f"file {path} is truncated or corrupt: {frames} of {expected} images readable")
    pixel = None
    if unit in UNIT_TO_NM and all(tag is not None for tag in resolution):
        sizes = []
        for tag in resolution:
            num, den = tag.value
            sizes.append(den / num * UNIT_TO_NM[unit] if num > 0 and den > 0 else float("nan"))
        pixel = (sizes[0], sizes[1])
    return data, pixel, {"format": "TIFF", "unit": unit}


def write_tiff(path: Path, data: np.ndarray, pixel_size_nm: float) -> None:
    """A float32 ImageJ TIFF calibrated in nm (its resolution tags and unit), read back alike by
    :func:`read_tiff`, Fiji and DigitalMicrograph: one image (y, x) or a stack (n, y, x)."""
    data = np.asarray(data, dtype=np.float32)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / pixel_size_nm, 1 / pixel_size_nm),
        metadata={"unit": "nm", "axes": "ZYX"[-data.ndim :]},
    )


def _rsciio_module(path: Path):
    """The rosettasciio plugin module that reads ``path``, chosen by its extension."""
    import importlib

    suffix = path.suffix.lower()
    name = RSCIIO_MODULES.get(suffix)
    if name is None:
        from rsciio import IO_PLUGINS

        # Anything else: the first plugin that claims the extension (TIFF has its own reader here).
        name = next(
            (p["api"] for p in IO_PLUGINS if suffix[1:] in (e.lower() for e in p["file_extensions"])),
            None,
        )
    if name is None:
        raise InputError(f"file {path}: no reader for files ending in {suffix or '(no extension)'!r}")
    return importlib.import_module(name)


def _nested(tree: dict, *keys: str):
    """``tree[k1][k2]...`` or None when any level is missing."""
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _find_key(tree, key: str):
    """First value stored under ``key`` anywhere in a nested dict (depth first), or None."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        for value in tree.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def _rsciio_meta(signal: dict, module) -> dict:
    """Best-effort acquisition settings from rosettasciio's mapped ``metadata`` tree."""
    md = signal.get("metadata", {}) or {}
    from rsciio import IO_PLUGINS

    # The plugin's own name ("DigitalMicrograph", "EMD", "MRC"), as a person knows the format.
    name = next((p["name"] for p in IO_PLUGINS if p["api"] == module.__name__), module.__name__)
    meta: dict = {"format": name}
    instrument = md.get("Acquisition_instrument", {}) or {}
    # The mapped tree files settings under TEM or SEM; either is what the microscope ran at.
    voltage = _find_key(instrument, "beam_energy")  # keV of the electrons = kV of the gun
    magnification = _find_key(instrument, "magnification")
    exposure = _find_key(instrument, "exposure")
    for key, value in (("voltage_kv", voltage), ("magnification", magnification), ("exposure_s", exposure)):
        try:
            if value is not None:
                meta[key] = float(value)
        except (TypeError, ValueError):
            pass
    date, time = _nested(md, "General", "date"), _nested(md, "General", "time")
    if date:
        meta["acquired"] = f"{date}T{time}" if time else str(date)
    title = _nested(md, "General", "title")
    if title:
        meta["title"] = str(title)
    return meta


def read_rsciio(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, dict]:
    """Image data, pixel size (y, x) in nm (None if uncalibrated) and metadata, via rosettasciio.

    For DM3/DM4, EMD, MRC and whatever else rosettasciio reads. The signal axes are the last two
    (y, x); a 3-D dataset is a stack (n, y, x). A file holding several datasets gives its first
    image; a 1-D dataset (a spectrum) raises :class:`InputError`.
    """
    path = Path(path)
    module = _rsciio_module(path)
    signals = module.file_reader(str(path))
    if not signals:
        raise InputError(f"file {path} holds no dataset")

    def signal_dims(sig: dict) -> int:
        # Spectra of a line scan are 2-D arrays but 1-D signals: count the non-navigation axes.
        axes = sig.get("axes") or []
        signal_axes = [a for a in axes if not a.get("navigate", False)]
        return len(signal_axes) if axes else np.ndim(sig["data"])

    images = [s for s in signals if signal_dims(s) >= 2]
    if not images:
        raise InputError(f"file {path} holds 1-D data (a spectrum?) where an image was expected")
    signal = images[0]
    data = np.asarray(signal["data"])
    axes = sorted(signal.get("axes") or [], key=lambda a: int(a.get("index_in_array", 0)))
    pixel = None
    if len(axes) == data.ndim and data.ndim >= 2:
        sizes = []
        for axis in axes[-2:]:
            unit = str(axis.get("units") or "").strip().lower()
            scale = float(axis.get("scale", float("nan")))
            # Readers write scale 1 and no unit (or -1, as the MRC reader does) for "uncalibrated".
            sizes.append(scale * UNIT_TO_NM[unit] if unit in UNIT_TO_NM and scale > 0 else None)
        if None not in sizes:
            pixel = (sizes[0], sizes[1])
    meta = _rsciio_meta(signal, module)
    if len(signals) > 1:
        meta["datasets"] = len(signals)
    return data, pixel, meta


# Reader by file extension; anything not listed goes to rosettasciio.
READERS = {".tif": read_tiff, ".tiff": read_tiff}


def read_file(path: Path) -> tuple[np.ndarray, tuple[float, float] | None, dict]:
    """Read one image file as a stack (n, y, x) of its own dtype, pixel size (y, x) in nm and metadata.

    Raises :class:`InputError` naming the file when it is missing, unreadable, truncated or holds
    something other than 2-D images or a 3-D stack.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file {path} does not exist")
    reader = READERS.get(path.suffix.lower(), read_rsciio)
    try:
        data, pixel, meta = reader(path)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file to the user
        kind = path.suffix.lstrip(".").upper() or "an image"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"file {path} cannot be read as {kind} (unreadable or truncated): {reason}") from exc
    if data.ndim == 2:
        data = data[None]
    if data.ndim == 1:
        raise InputError(f"file {path} holds 1-D data (a spectrum?) where an image was expected")
    if data.ndim != 3:
        raise InputError(f"file {path} holds {data.ndim}-D data, expected 2-D images or a 3-D stack")
    return data, pixel, meta


def read_images(paths: list[Path], series: str) -> tuple[np.ndarray, tuple[float, float] | None, dict]:
    """Stack (n, y, x) float32 from one 3-D file or several 2-D files, and the pixel size in nm."""
    stacks, pixels, meta = [], [], {}
    for path in paths:
        try:
            data, pixel, meta = read_file(path)
        except InputError as exc:
            raise InputError(f"series {series}: {exc}") from exc
        stacks.append(data)
        pixels.append(pixel)
    shapes = {s.shape[1:] for s in stacks}
    if len(shapes) > 1:
        raise InputError(
            f"series {series}: images of different shapes {sorted(shapes)} in {', '.join(map(str, paths))}"
        )
    # One float32 array we may repair in place, copied only where the reader's array is not one.
    stack = np.concatenate(stacks, dtype=np.float32) if len(stacks) > 1 else np.require(stacks[0], np.float32, "W")
    known = [p for p in pixels if p is not None]
    return stack, (known[0] if known else None), meta


def inspect_file(path: str | Path) -> dict:
    """What ingestion would see in one file; reads it, writes nothing.

    Returns
    -------
    dict
        ``path``, ``format``, ``n_images``, ``shape`` ([n, y, x]), ``dtype``, ``pixel_size_nm``
        ([y, x] or None), ``problems`` (things ingestion would refuse or a person should check),
        ``meta`` (acquisition settings found) and ``error`` (why the file cannot serve as an image
        or image stack; None when it can).
    """
    path = Path(path)
    report: dict = {
        "path": str(path),
        "format": path.suffix.lstrip(".").upper(),
        "n_images": None,
        "shape": None,
        "dtype": None,
        "pixel_size_nm": None,
        "problems": [],
        "meta": {},
        "error": None,
    }
    try:
        data, pixel, meta = read_file(path)
    except InputError as exc:
        report["error"] = str(exc)
        report["problems"].append(str(exc))
        return report
    report.update(
        format=meta.get("format", report["format"]),
        n_images=int(data.shape[0]),
        shape=[int(s) for s in data.shape],
        dtype=str(data.dtype),
        pixel_size_nm=[float(p) for p in pixel] if pixel is not None else None,
        meta={k: v for k, v in meta.items() if k != "format"},
    )
    # The same checks ingest() makes, so that a person sees them before writing the sheet.
    report["problems"] += [p for p in (calibration_problem(pixel), nonfinite_problem(data)) if p]
    return report


def calibration_problem(pixel: tuple[float, float] | None) -> str | None:
    """Why a file's pixel calibration cannot be used (None when it can)."""
    if pixel is None or not (pixel[0] > 0 and pixel[1] > 0):
        return "no usable pixel calibration in the files; give pixel_size_nm in the sheet"
    if not math.isclose(pixel[0], pixel[1], rel_tol=1e-4):
        return f"non-square pixels ({pixel[0]:g} x {pixel[1]:g} nm); give pixel_size_nm in the sheet if intended"
    return None


def nonfinite_problem(data: np.ndarray) -> str | None:
    """How many pixels are NaN or infinite (None when all are finite)."""
    if not np.issubdtype(data.dtype, np.floating) or np.isfinite(data).all():
        return None
    bad = int(np.sum(~np.isfinite(data)))
    return f"{bad} NaN or infinite pixels"
