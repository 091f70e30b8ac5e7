"""Throwaway certificate authorities and server certificates (openssl), for the ssl-mode tests."""

from __future__ import annotations

import subprocess
from pathlib import Path


# What these tests check (chains, bundles, host names) does not depend on the key type; a P-256 key is
# generated in ~5 ms, an RSA-2048 one in ~180 ms, and a run makes about twenty.
KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl("req", "-x509", *KEY, "-nodes", "-days", "2", "-subj", f"/O=convex-gcp test/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", str(key), "-out", str(cert))
    return cert, key


def make_server_cert(directory: Path, name: str, ca: tuple[Path, Path], dns_name: str) -> tuple[Path, Path]:
    """A leaf like a CAS-issued Cloud SQL server certificate: the instance's DNS name in the SAN only."""
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName=DNS:{dns_name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                   "keyUsage=critical,digitalSignature\n")
    _openssl("req", "-new", *KEY, "-nodes", "-subj", "/CN=project:instance", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial", "-days", "2",
             "-extfile", str(ext), "-out", str(cert))
    return cert, key


def make_intermediate_ca(directory: Path, name: str, root: tuple[Path, Path]) -> tuple[Path, Path]:
    """A subordinate CA signed by `root`, like the regional CA under Cloud SQL's shared CAS root."""
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text("basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n")
    _openssl("req", "-new", *KEY, "-nodes", "-subj", f"/O=convex-gcp test/CN={name}", "-keyout", str(key), "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(root[0]), "-CAkey", str(root[1]), "-CAcreateserial", "-days", "2",
             "-extfile", str(ext), "-out", str(cert))
    return cert, key
