"""Switchboard operator: turns PlatformConnections into gateway Deployments."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("switchboard")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
