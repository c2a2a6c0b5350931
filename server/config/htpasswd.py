"""Apache htpasswd files: reading them, and checking a password against an entry.

A file holds ``user:hash`` lines (``#`` comments and blank lines ignored; like Apache's
mod_authn_file, fields after a second ``:`` are ignored).  Accepted hashes:

- bcrypt (``$2y$``, ``$2b$``, ``$2a$``, ``htpasswd -B``), through the optional ``bcrypt`` package
  (the ``auth`` extra), imported only when a file has such an entry;
- SHA-512 and SHA-256 crypt (``$6$``, ``$5$``, ``htpasswd -5``/``-2``), computed here from
  Ulrich Drepper's "Unix crypt using SHA-256 and SHA-512" with hashlib: the ``crypt`` module is
  gone from Python 3.13;
- ``{SHA}`` (unsalted SHA-1, ``htpasswd -s``) only when the mount says ``allow_sha1``.

MD5 (``$apr1$``, ``$1$``), crypt(3) DES and plaintext entries are refused when the file is read,
with a message saying how to re-create the entry: they fall to a GPU in hours.  A problem with
the file is an ``HtpasswdError`` naming the line.

Checking is built not to leak through timing: every comparison is ``hmac.compare_digest``, and a
user that is not in the file is checked against a fixed dummy entry of the scheme and cost most
entries use, so an unknown user costs what a wrong password costs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

Scheme = Literal["bcrypt", "sha512-crypt", "sha256-crypt", "sha1"]

INSTALL_BCRYPT = "install it: pip install 'porch[auth]'"
RECREATE = "re-create the entry with `htpasswd -B` (bcrypt)"
BCRYPT_MAX_PASSWORD_BYTES = 72  # bcrypt reads no further (and the bcrypt package refuses more)

BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
SHA_CRYPT = re.compile(r"\$([56])\$(?:rounds=(\d+)\$)?([^$:]{0,16})\$([./0-9A-Za-z]+)")
SHA1 = re.compile(r"\{SHA\}([A-Za-z0-9+/]{27}=)")
DES_CRYPT = re.compile(r"[./0-9A-Za-z]{13}")
# What the weak schemes look like, each with why it is refused.
REFUSED: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\$apr1\$.*"), f"apr1 (MD5) entries are weak and not supported: {RECREATE}"),
    (re.compile(r"\$1\$.*"), f"MD5 crypt ($1$) entries are weak and not supported: {RECREATE}"),
    (DES_CRYPT, f"crypt(3) DES entries are weak (8 characters at most) and not supported: {RECREATE}"),
)
PLAINTEXT = f"plaintext (or unknown) password entries are not supported: {RECREATE}"


# --- SHA-256 and SHA-512 crypt (Drepper) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShaCrypt:
    """One of the two SHA crypt variants: its hash, id, digest length and output byte order."""

    name: str
    ident: str  # "5" or "6", between the first two "$"
    digest_size: int
    # The spec's order of digest bytes, three at a time into four characters; the last group
    # (a digest length not divisible by 3) is shorter.
    order: tuple[tuple[int, ...], ...]

    @property
    def encoded_length(self) -> int:
        return (self.digest_size * 8 + 5) // 6


SHA256_CRYPT = ShaCrypt(
    "sha256",
    "5",
    32,
    (
        (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14), (15, 25, 5), (6, 16, 26),
        (27, 7, 17), (18, 28, 8), (9, 19, 29), (31, 30),
    ),
)  # fmt: skip
SHA512_CRYPT = ShaCrypt(
    "sha512",
    "6",
    64,
    (
        (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4), (47, 5, 26), (6, 27, 48),
        (28, 49, 7), (50, 8, 29), (9, 30, 51), (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13),
        (56, 14, 35), (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19), (62, 20, 41),
        (63,),
    ),
)  # fmt: skip
SHA_CRYPTS = {variant.ident: variant for variant in (SHA256_CRYPT, SHA512_CRYPT)}
DEFAULT_ROUNDS = 5000
MIN_ROUNDS, MAX_ROUNDS = 1000, 999_999_999
MAX_SALT_CHARS = 16
CRYPT_ALPHABET = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _repeated(block: bytes, length: int) -> bytes:
    """``block`` repeated and cut to ``length`` bytes (the spec's "P sequence", "S sequence")."""
    return (block * (length // len(block) + 1))[:length]


def _crypt_base64(digest: bytes, order: tuple[tuple[int, ...], ...]) -> str:
    """The spec's base64: groups of bytes, most significant first, six bits at a time from the low end."""
    characters = []
    for group in order:
        value = 0
        for index in group:
            value = (value << 8) | digest[index]
        for _ in range(len(group) + 1):
            characters.append(CRYPT_ALPHABET[value & 0x3F])
            value >>= 6
    return "".join(characters)


def sha_crypt(password: bytes, setting: str) -> str:
    """crypt(3) for a ``$5$`` or ``$6$`` setting (``$6$[rounds=N$]salt[$...]``), as glibc computes it.

    Follows the specification step by step, including its clamping of ``rounds`` to 1000..999999999
    and of the salt to 16 characters; the step numbers are the specification's.
    """
    found = re.fullmatch(r"\$([56])\$(?:rounds=(\d+)\$)?([^$]*)(?:\$.*)?", setting, re.DOTALL)
    if found is None:
        raise ValueError("not a $5$ or $6$ crypt setting")
    variant = SHA_CRYPTS[found[1]]
    rounds = DEFAULT_ROUNDS if found[2] is None else min(max(int(found[2]), MIN_ROUNDS), MAX_ROUNDS)
    salt_text = found[3][:MAX_SALT_CHARS]
    salt = salt_text.encode()

    def digest(data: bytes) -> bytes:
        return hashlib.new(variant.name, data).digest()

    alternate = digest(password + salt + password)  # steps 4-8
    length_bits = bin(len(password))[2:][::-1]  # step 11: the bits of the length, lowest first
    a = digest(  # steps 1-12
        password
        + salt
        + _repeated(alternate, len(password))  # steps 9-10
        + b"".join(alternate if bit == "1" else password for bit in length_bits)
    )
    p_sequence = _repeated(digest(password * len(password)), len(password))  # steps 13-16
    s_sequence = _repeated(digest(salt * (16 + a[0])), len(salt))  # steps 17-20
    c = a
    for round_number in range(rounds):  # step 21
        data = p_sequence if round_number % 2 else c
        if round_number % 3:
            data += s_sequence
        if round_number % 7:
            data += p_sequence
        data += c if round_number % 2 else p_sequence
        c = digest(data)
    rounds_text = f"rounds={rounds}$" if found[2] is not None else ""
    return f"${variant.ident}${rounds_text}{salt_text}${_crypt_base64(c, variant.order)}"


# --- entries and files -----------------------------------------------------------------------


class HtpasswdError(ValueError):
    """A problem with an htpasswd file: unreadable, a malformed line, a refused scheme."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Entry:
    """One user's hash, with its scheme and cost (bcrypt cost, crypt rounds; 0 for SHA-1)."""

    scheme: Scheme
    hash: str
    cost: int


_bcrypt_module: ModuleType | None = None


def bcrypt_module() -> ModuleType:
    """The ``bcrypt`` package, imported on first use: most configs never need it."""
    global _bcrypt_module
    if _bcrypt_module is None:
        _bcrypt_module = importlib.import_module("bcrypt")
    return _bcrypt_module


def verify(entry: Entry, password: bytes) -> bool:
    """Whether ``password`` matches ``entry``, compared in constant time."""
    if entry.scheme == "bcrypt":
        stored = entry.hash.encode()
        computed: bytes = bcrypt_module().hashpw(password[:BCRYPT_MAX_PASSWORD_BYTES], stored)
        return hmac.compare_digest(computed, stored)
    if entry.scheme == "sha1":
        computed = b"{SHA}" + base64.b64encode(hashlib.sha1(password).digest())
        return hmac.compare_digest(computed, entry.hash.encode())
    return hmac.compare_digest(sha_crypt(password, entry.hash).encode(), entry.hash.encode())


def parse_entry(text: str, *, allow_sha1: bool) -> Entry:
    """The entry for one hash field; ValueError saying why it is refused or malformed."""
    if text.startswith("$2"):
        if (found := BCRYPT.fullmatch(text)) is None or not 4 <= int(found[1]) <= 31:
            raise ValueError("malformed bcrypt hash")
        try:
            bcrypt_module()
        except ImportError:
            raise ValueError(f"bcrypt entries need the bcrypt package: {INSTALL_BCRYPT}") from None
        return Entry("bcrypt", text, int(found[1]))
    if text.startswith(("$5$", "$6$")):
        found = SHA_CRYPT.fullmatch(text)
        variant = SHA_CRYPTS[text[1]]
        if found is None or len(found[4]) != variant.encoded_length:
            raise ValueError(f"malformed {variant.name.upper()} crypt hash")
        rounds = DEFAULT_ROUNDS if found[2] is None else int(found[2])
        if not MIN_ROUNDS <= rounds <= MAX_ROUNDS:
            raise ValueError(f"rounds must be {MIN_ROUNDS} to {MAX_ROUNDS}, got {rounds}")
        return Entry("sha512-crypt" if variant is SHA512_CRYPT else "sha256-crypt", text, rounds)
    if text.startswith("{SHA}"):
        if SHA1.fullmatch(text) is None:
            raise ValueError("malformed {SHA} hash")
        if not allow_sha1:
            raise ValueError(
                "{SHA} entries are unsalted SHA-1, accepted only with `allow_sha1: true`; better, " + RECREATE
            )
        return Entry("sha1", text, 0)
    for pattern, reason in REFUSED:
        if pattern.fullmatch(text):
            raise ValueError(reason)
    raise ValueError(PLAINTEXT)


# A dummy entry per scheme, checked for users not in the file; ``{cost}`` takes the file's.
DUMMY_HASHES: Mapping[Scheme, str] = {
    "bcrypt": "$2y${cost:02d}$V8.bvnAtoy3xerf7UE01O.2iisb4FDANejL7N5IzAjbshkZUGrieS",
    "sha512-crypt": "$6$rounds={cost}$nosuchuser$" + "." * SHA512_CRYPT.encoded_length,
    "sha256-crypt": "$5$rounds={cost}$nosuchuser$" + "." * SHA256_CRYPT.encoded_length,
    "sha1": "{{SHA}}" + base64.b64encode(bytes(20)).decode(),
}
EMPTY_FILE_DUMMY: tuple[Scheme, int] = ("sha512-crypt", DEFAULT_ROUNDS)


def dummy_entry(entries: Mapping[str, Entry]) -> Entry:
    """An entry of the scheme and cost most entries use (SHA-512 crypt for an empty file)."""
    kinds = Counter((entry.scheme, entry.cost) for entry in entries.values())
    scheme, cost = kinds.most_common(1)[0][0] if kinds else EMPTY_FILE_DUMMY
    return Entry(scheme, DUMMY_HASHES[scheme].format(cost=cost), cost)


@dataclass(frozen=True)
class Htpasswd:
    """The users of one htpasswd file."""

    entries: Mapping[str, Entry]
    dummy: Entry

    def check(self, user: str, password: bytes) -> bool | None:
        """True if ``password`` is ``user``'s, False if not, None if there is no such user.

        Costs one verification in every case, so the time taken does not tell which users exist.
        """
        entry = self.entries.get(user)
        matched = verify(entry or self.dummy, password)
        return None if entry is None else matched


def parse(data: bytes, *, allow_sha1: bool) -> Htpasswd:
    """The users of an htpasswd file's bytes (UTF-8); HtpasswdError at the first bad line."""
    entries: dict[str, Entry] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode().strip()
        except UnicodeDecodeError:
            raise HtpasswdError("not UTF-8 text", number) from None
        if not line or line.startswith("#"):
            continue
        user, colon, rest = line.partition(":")
        hash_text = rest.partition(":")[0]
        if not colon or not user or not hash_text or not user.isprintable():
            raise HtpasswdError("expected user:hash", number)
        if user in lines:
            raise HtpasswdError(f"user '{user}' again (first on line {lines[user]})", number)
        try:
            entries[user] = parse_entry(hash_text, allow_sha1=allow_sha1)
        except ValueError as error:
            raise HtpasswdError(str(error), number) from None
        lines[user] = number
    return Htpasswd(entries, dummy_entry(entries))


def read(path: Path, *, allow_sha1: bool) -> Htpasswd:
    """The users of the htpasswd file at ``path``; HtpasswdError if it is unreadable or invalid."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise HtpasswdError(f"cannot read it: {error.strerror or error}") from None
    return parse(data, allow_sha1=allow_sha1)
