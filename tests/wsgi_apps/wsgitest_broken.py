"""A module that cannot be imported: mounting it must be a config error, never a 500."""

from __future__ import annotations


def read_settings() -> None:
    raise LookupError("the database settings are missing")


read_settings()


def application(environ: dict, start_response: object) -> list[bytes]:  # pragma: no cover
    return []
