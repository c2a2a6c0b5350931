"""Throwaway certificates for the TLS tests, made with the ``openssl`` command line.

``make_pki(directory)`` writes a self-signed server certificate for localhost, 127.0.0.1 and
::1 (clients verify against it directly), a key that belongs to nothing, a CA with a client
certificate it signed, and a self-signed "rogue" client certificate that CA never saw.  Keys
are P-256, which openssl makes in milliseconds.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from conftest import need_program

CURVE = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
DAYS = ["-days", "2"]


@dataclass(frozen=True)
class Pki:
    server_cert: Path
    server_key: Path
    other_key: Path
    ca_cert: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path

    @property
    def client(self) -> tuple[str, str]:
        """``requests``' ``cert=`` for the CA-signed client certificate."""
        return str(self.client_cert), str(self.client_key)

    @property
    def rogue(self) -> tuple[str, str]:
        return str(self.rogue_cert), str(self.rogue_key)


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        [need_program("openssl"), *map(str, args)],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def self_signed(directory: Path, name: str, subject: str, *extra: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    openssl("req", "-x509", *CURVE, *DAYS, "-keyout", key, "-out", cert, "-subj", subject, *extra, cwd=directory)
    return cert, key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    server_cert, server_key = self_signed(
        directory, "server", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"
    )
    other_key = directory / "other.key"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", other_key, cwd=directory)
    ca_cert, ca_key = self_signed(directory, "ca", "/CN=porch test CA")
    client_key, request = directory / "client.key", directory / "client.csr"
    openssl(
        "req", "-new", *CURVE, "-keyout", client_key, "-out", request, "-subj", "/CN=porch test client", cwd=directory
    )
    client_cert = directory / "client.pem"
    openssl(
        "x509",
        "-req",
        "-in",
        request,
        "-CA",
        ca_cert,
        "-CAkey",
        ca_key,
        "-set_serial",
        "2",
        *DAYS,
        "-out",
        client_cert,
        cwd=directory,
    )
    rogue_cert, rogue_key = self_signed(directory, "rogue", "/CN=porch test client")
    return Pki(server_cert, server_key, other_key, ca_cert, client_cert, client_key, rogue_cert, rogue_key)
