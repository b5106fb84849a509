"""TLS material for a test etcd (:mod:`s2s.testing_etcd`): a throwaway CA, a server certificate
for 127.0.0.1 and localhost, a client certificate, and an unrelated CA for rejecting twins.

Plain TLS minted at run time with ``cryptography`` (not SPIFFE); for tests only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["EtcdTlsFiles"]


@dataclass(frozen=True, slots=True)
class EtcdTlsFiles:
    """A throwaway CA with a server certificate (127.0.0.1, localhost) and a client certificate.

    ``other_ca`` is an unrelated CA (with its own client certificate), for rejecting twins.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    other_client_cert: Path
    other_client_key: Path

    @classmethod
    def create(cls, directory: Path) -> EtcdTlsFiles:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca_key, ca_cert = _ca("s2s test etcd CA")
        other_key, other_cert = _ca("unrelated CA")
        files = cls(
            *(directory / n for n in ("ca.pem", "server.pem", "server-key.pem")),
            *(directory / n for n in ("client.pem", "client-key.pem", "other-ca.pem")),
            *(directory / n for n in ("other-client.pem", "other-client-key.pem")),
        )
        _write(files.ca, _pem(ca_cert))
        _write(files.other_ca, _pem(other_cert))
        for cert_path, key_path, issuer, server in (
            (files.server_cert, files.server_key, (ca_key, ca_cert), True),
            (files.client_cert, files.client_key, (ca_key, ca_cert), False),
            (files.other_client_cert, files.other_client_key, (other_key, other_cert), False),
        ):
            key, cert = _leaf(*issuer, server=server)
            _write(cert_path, _pem(cert))
            _write(key_path, _key_pem(key))
        return files


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: str, issuer: str, public: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = ca_cert.subject.rfc4514_string().removeprefix("CN=")
    eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    builder = (
        _builder("etcd" if server else "s2s-ca", issuer, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    return key, builder.sign(ca_key, hashes.SHA256())
