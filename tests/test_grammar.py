"""The HTTP grammar rules written once in porch.http.grammar, with the edge cases where the
static and XML-RPC handlers' two copies used to answer differently."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from porch.http.grammar import accepts_coding


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("br, deflate", False),
        ("gzip", True),
        ("GZip", True),
        ("x-gzip", True),
        ("X-GZIP;q=0.5", True),
        ("deflate, gzip;q=0.1", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;level=1;q=1", True),
        ("gzip ; q=0.5", True),
        ("gzip;Q=0.5", True),
        ("gzip;q = 0.5", True),
        ("*", True),
        ("*;q=0", False),
        ("br;q=1, *;q=0", False),
        ("deflate, *;q=0.1", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("gzip; q=0.0, *", False),
        ("*, gzip;q=0", False),
        ("*;q=0.5, gzip;q=0", False),
        ("gzip;q=0, *;q=1", False),
        ("gzip;q=1, *;q=0", True),
        # RFC 9110 12.4.2: at most three decimals, and nothing above 1 -- else a refusal
        ("gzip;q=0.001", True),
        ("gzip;q=0.0001", False),
        ("gzip;q=1.000", True),
        ("gzip;q=1.001", False),
        ("gzip;q=2", False),
        ("gzip;q=-1", False),
        ("gzip;q=", False),
        ("gzip;q=bogus", False),
        ("gzip;q=1e0", False),
        ("gzip;q=.5", False),
        # listed twice: a refusal anywhere wins, in either order
        ("gzip;q=0, gzip;q=1", False),
        ("gzip;q=1, gzip;q=0", False),
        ("gzip, x-gzip;q=0", False),
        ("gzip;q=0.5, gzip;q=1", True),
    ],
)
def test_accepts_gzip(value: str | None, expected: bool) -> None:
    assert accepts_coding(value, "gzip") is expected


def test_other_codings_are_asked_by_name() -> None:
    assert accepts_coding("br, gzip;q=0", "br")
    assert not accepts_coding("br, gzip;q=0", "gzip")
    assert not accepts_coding("gzip", "br")


@given(st.text(max_size=80))
def test_any_field_value_gives_an_answer(value: str) -> None:
    assert accepts_coding(value, "gzip") in (True, False)
