"""Durapay cardnet: a simulated card network served over HTTP (see README.md)."""

from cardnet.app import create_app
from cardnet.settings import Settings

__all__ = ["Settings", "create_app"]
