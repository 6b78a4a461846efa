"""phasepipe: differentiable phase retrieval of Lorentz TEM through-focus series."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phasepipe")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
