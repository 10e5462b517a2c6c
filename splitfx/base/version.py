"""The installed package version (``splitfx --version``, ``splitfx.__version__``)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("splitfx")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
