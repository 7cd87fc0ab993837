"""HTTP interface of the collector (the only package that imports FastAPI)."""

from collector.api.app import create_app

__all__ = ["create_app"]
