"""A seeded, bounded mutation fuzzer guided by line coverage, with the standard library only.

Hypothesis draws inputs from strategies written by hand; this fuzzer starts from real requests
(the corpus) and breaks them byte by byte and line by line, keeping every mutant that makes the
code under test run a line transition it had not run before, so that it digs into the branches
the seeds reach.  Coverage is collected with ``sys.settrace``, restricted to the source files
under test, so it works the same on every supported Python; it costs speed, not correctness.

Everything is a function of the seed: the same seed gives the same inputs in the same order, so
a failure is replayed with the seed it printed (and at least as many iterations).
"""

from __future__ import annotations

import random
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

# Bytes and fragments that parsers of HTTP framing and header blocks treat specially.
INTERESTING_BYTES = b'\x00\t\n\r\x0b\x0c ",:;=\x7f\x80\xff09afAF-+_x%/?#*@[]\\'
INTERESTING_NUMBERS: tuple[bytes, ...] = (
    b"0",
    b"1",
    b"00",
    b"-1",
    b"+5",
    b"1_0",
    b"0x5",
    b"5 ",
    b" 5",
    b"5, 5",
    b"5,6",
    b"7fffffffffffffff",
    b"ffffffffffffffff",
    b"10000000000000000",
    b"18446744073709551616",
    b"99999999999999999999",
    b"\xb2",
)
Check = Callable[[bytes], None]
_NUMBER = re.compile(rb"[0-9A-Fa-f]+")


class LineCoverage:
    """Line transitions (code, previous line, line) run inside ``files``, via ``sys.settrace``."""

    def __init__(self, files: Iterable[str]) -> None:
        self.files = frozenset(files)
        self.seen: set[tuple[CodeType, int, int]] = set()

    def run(self, check: Check, data: bytes) -> bool:
        """Run ``check(data)`` traced; True if it ran a transition never seen before."""
        hits: set[tuple[CodeType, int, int]] = set()
        files = self.files

        def on_call(frame: FrameType, event: str, arg: Any) -> Callable[..., Any] | None:
            if frame.f_code.co_filename not in files:
                return None
            previous = -1

            def on_line(frame: FrameType, event: str, arg: Any) -> Callable[..., Any]:
                nonlocal previous
                if event == "line":
                    hits.add((frame.f_code, previous, frame.f_lineno))
                    previous = frame.f_lineno
                return on_line

            return on_line

        outer = sys.gettrace()
        sys.settrace(on_call)
        try:
            check(data)
        finally:
            sys.settrace(outer)
            new = hits - self.seen
            self.seen |= hits
        return bool(new)


class Mutator:
    """Byte-level and line-level mutations of HTTP-shaped input, drawn from one seeded RNG."""

    def __init__(self, rng: random.Random, dictionary: Sequence[bytes], max_size: int) -> None:
        self.rng = rng
        self.dictionary = dictionary
        self.max_size = max_size

    def mutate(self, data: bytes, other: bytes) -> bytes:
        """``data`` changed by one to four mutations; ``other`` is the partner for splicing."""
        operations = (
            self._flip_bit,
            self._set_byte,
            self._insert_token,
            self._delete_span,
            self._duplicate_span,
            self._replace_number,
            self._line_edit,
            self._splice,
        )
        for _ in range(self.rng.randint(1, 4)):
            data = self.rng.choice(operations)(data, other)
        return data[: self.max_size]

    def _position(self, data: bytes) -> int:
        return self.rng.randint(0, len(data))

    def _flip_bit(self, data: bytes, other: bytes) -> bytes:
        if not data:
            return data
        at = self.rng.randrange(len(data))
        return data[:at] + bytes([data[at] ^ (1 << self.rng.randrange(8))]) + data[at + 1 :]

    def _set_byte(self, data: bytes, other: bytes) -> bytes:
        if not data:
            return data
        at = self.rng.randrange(len(data))
        return data[:at] + bytes([self.rng.choice(INTERESTING_BYTES)]) + data[at + 1 :]

    def _insert_token(self, data: bytes, other: bytes) -> bytes:
        at = self._position(data)
        return data[:at] + self.rng.choice(self.dictionary) + data[at:]

    def _delete_span(self, data: bytes, other: bytes) -> bytes:
        at = self._position(data)
        return data[:at] + data[at + self.rng.randint(1, 16) :]

    def _duplicate_span(self, data: bytes, other: bytes) -> bytes:
        at = self._position(data)
        span = data[at : at + self.rng.randint(1, 64)]
        return data[:at] + span * self.rng.randint(2, 4) + data[at + len(span) :]

    def _replace_number(self, data: bytes, other: bytes) -> bytes:
        numbers = list(_NUMBER.finditer(data))
        if not numbers:
            return self._insert_token(data, other)
        match = self.rng.choice(numbers)
        return data[: match.start()] + self.rng.choice(INTERESTING_NUMBERS) + data[match.end() :]

    def _line_edit(self, data: bytes, other: bytes) -> bytes:
        """Duplicate, drop, swap or add a line, or change how one ends."""
        lines = data.split(b"\r\n")
        a, b = self.rng.randrange(len(lines)), self.rng.randrange(len(lines))
        choice = self.rng.randrange(5)
        if choice == 0:
            lines.insert(a, lines[b])
        elif choice == 1 and len(lines) > 1:
            del lines[a]
        elif choice == 2:
            lines[a], lines[b] = lines[b], lines[a]
        elif choice == 3:
            lines.insert(a, self.rng.choice(self.dictionary).rstrip(b"\r\n"))
        elif a < len(lines) - 1:
            ending = self.rng.choice((b"\n", b"\r", b"\r\r\n", b"\n\r", b"", b" \r\n", b"\r\n "))
            return b"\r\n".join(lines[: a + 1]) + ending + b"\r\n".join(lines[a + 1 :])
        return b"\r\n".join(lines)

    def _splice(self, data: bytes, other: bytes) -> bytes:
        return data[: self._position(data)] + other[self.rng.randint(0, len(other)) :]


@dataclass
class Finding:
    """An input that broke a check, with where (iteration 0 is the seeds) and how."""

    iteration: int
    data: bytes
    error: str


@dataclass
class Report:
    """What one run did: how much, how fast, how far it got, and what it found."""

    seed: str
    iterations: int = 0
    seconds: float = 0.0
    pool: int = 0
    transitions: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.iterations / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.iterations} iterations in {self.seconds:.1f} s "
            f"({self.per_second:.0f}/s), pool {self.pool}, {self.transitions} line transitions"
        )


def fuzz(
    check: Check,
    seeds: Sequence[bytes],
    *,
    seed: str,
    iterations: int,
    seconds: float,
    coverage: LineCoverage,
    dictionary: Sequence[bytes],
    max_size: int = 4096,
    max_findings: int = 5,
) -> Report:
    """Run ``check`` on every seed, then on mutants until ``iterations`` or ``seconds`` run out.

    ``check`` raises on a broken rule; each distinct failure (by its last traceback line) is
    recorded once, up to ``max_findings``, and the run goes on.
    """
    rng = random.Random(seed)
    mutator = Mutator(rng, dictionary, max_size)
    report = Report(seed)
    known: set[str] = set()
    start = time.monotonic()

    def attempt(iteration: int, data: bytes) -> bool:
        """Whether ``data`` passed ``check`` and ran something new."""
        try:
            return coverage.run(check, data)
        except Exception:  # any exception at all is what the run looks for
            error = traceback.format_exc()
            key = error.strip().splitlines()[-1]
            if key not in known and len(report.findings) < max_findings:
                known.add(key)
                report.findings.append(Finding(iteration, data, error))
            return False

    pool = list(seeds)
    for data in seeds:
        attempt(0, data)
    for iteration in range(1, iterations + 1):
        if time.monotonic() - start > seconds:
            break
        mutant = mutator.mutate(rng.choice(pool), rng.choice(pool))
        if attempt(iteration, mutant):
            pool.append(mutant)
        report.iterations = iteration
    report.seconds = time.monotonic() - start
    report.pool = len(pool)
    report.transitions = len(coverage.seen)
    return report
