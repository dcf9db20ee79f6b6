"""The local endpoint's TLS material: a CA created once per data directory and a server
certificate for every name the endpoint answers to.

Clients trust the CA file (``sslrootcert``) and connect with ``sslmode=verify-full``,
exactly as they trust Amazon Root CA 1 for a real cluster.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

ALPN = "postgresql"
_RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _make_ca(files: TLSFiles) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dsqlkit local"),
        x509.NameAttribute(NameOID.COMMON_NAME, "dsqlkit local CA"),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(files.ca_key, _key_pem(key))
    _write_public(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    log.info("created local CA %s", files.ca_cert)


def _sans(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def _server_cert_ok(files: TLSFiles, names: list[str]) -> bool:
    if not files.server_cert.exists() or not files.server_key.exists():
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    if cert.issuer != ca.subject or cert.not_valid_after_utc - _RENEW_BEFORE < _now():
        return False
    return set(san) == set(_sans(names))


def _make_server_cert(files: TLSFiles, names: list[str]) -> None:
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(_sans(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(files.server_key, _key_pem(key))
    _write_public(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    log.info("issued server certificate for %s", ", ".join(names))


def ensure_tls(directory: Path, names: list[str]) -> TLSFiles:
    """Create the CA once and (re)issue the server certificate when names or dates require."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TLSFiles(
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )
    if not files.ca_cert.exists() or not files.ca_key.exists():
        _make_ca(files)
    if not _server_cert_ok(files, names):
        _make_server_cert(files, names)
    return files


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context offering ALPN ``postgresql`` (required for PostgreSQL 17 direct TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.server_cert, files.server_key)
    ctx.set_alpn_protocols([ALPN])
    return ctx
