"""Generate a development trust domain for trying s2s with other tools (openssl, curl, nginx).

    python certs-dev/generate.py [--out certs-dev/out] [--trust-domain dev.s2s.test]

Writes, under ``--out`` (created 0700; every private key 0600)::

    root.pem  root.key                   self-signed root CA (spiffe://<td>)
    intermediate.pem  intermediate.key   signing CA under the root
    bundle.pem                           the trust bundle: the root, PEM
    bundle.spiffe.json                   the same as a SPIFFE bundle (JWKS), with a JWT-SVID key
    jwt.key                              the JWT-SVID signing key (kid in bundle.spiffe.json)
    <workload>/svid.pem                  leaf then intermediate (what a server or client presents)
    <workload>/svid_key.pem              the leaf's key
    <workload>/bundle.pem                copy of bundle.pem (same layout as `s2s-ca x509 mint`)
    intruder/...                         an SVID for the same trust domain name under a *different*
                                         root: every tool must refuse it (a rejecting twin)

Workloads: ``server`` (spiffe://<td>/server, DNS name ``localhost`` so curl's host check passes),
``client`` (spiffe://<td>/client) and ``web`` (spiffe://<td>/web, DNS ``localhost``). Certificates
are built with the production templates of :mod:`s2s.core.x509svid` and each SVID is checked with
``check_x509_svid`` before it is written. Development only: these keys live on disk unencrypted.
Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from s2s.core.bundle import Bundle, JwtAuthority
from s2s.core.errors import InvalidSpiffeId, S2SError
from s2s.core.spiffe_id import SpiffeId, TrustDomain
from s2s.core.x509svid import X509Svid, check_x509_svid
from s2s.core.x509templates import (
    intermediate_template,
    leaf_template,
    root_template,
    serial_from_entropy,
    sign_certificate,
)

__all__ = ["DEFAULT_WORKLOADS", "Workload", "generate", "main"]

DEFAULT_OUT = Path(__file__).resolve().parent / "out"
DEFAULT_TRUST_DOMAIN = "dev.s2s.test"
ROOT_TTL = timedelta(days=365)
INTERMEDIATE_TTL = timedelta(days=90)
DEFAULT_SVID_TTL = timedelta(days=7)
KEY_MODE = 0o600
DIR_MODE = 0o700
PUBLIC_MODE = 0o644


@dataclass(frozen=True, slots=True)
class Workload:
    """One SVID to write: ``<out>/<name>/`` holds it."""

    name: str
    path: str
    dns_names: tuple[str, ...] = ()


DEFAULT_WORKLOADS: tuple[Workload, ...] = (
    Workload("server", "server", ("localhost",)),
    Workload("client", "client"),
    Workload("web", "web", ("localhost",)),
)
INTRUDER = Workload("intruder", "client")  # same ID as the client, signed by a foreign root


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _serial() -> int:
    return serial_from_entropy(os.urandom(16))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a new file with ``mode`` from the start (a key is never world-readable)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)
    tmp.replace(path)


def _mkdir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    path.chmod(DIR_MODE)


@dataclass(frozen=True, slots=True)
class _Ca:
    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey


def _new_ca(td: TrustDomain, now: datetime) -> _Ca:
    root_key, inter_key = _key(), _key()
    root = sign_certificate(
        root_template(
            trust_domain=td,
            public_key=root_key.public_key(),
            now=now,
            ttl=ROOT_TTL,
            serial=_serial(),
        ),
        root_key,
    )
    inter = sign_certificate(
        intermediate_template(
            trust_domain=td,
            public_key=inter_key.public_key(),
            issuer=root,
            now=now,
            ttl=INTERMEDIATE_TTL,
            serial=_serial(),
        ),
        root_key,
    )
    return _Ca(root, root_key, inter, inter_key)


def _issue(
    ca: _Ca, spiffe_id: SpiffeId, dns: Sequence[str], now: datetime, ttl: timedelta
) -> X509Svid:
    key = _key()
    leaf = sign_certificate(
        leaf_template(
            spiffe_id=spiffe_id,
            public_key=key.public_key(),
            issuer=ca.intermediate,
            now=now,
            ttl=ttl,
            serial=_serial(),
            dns_names=dns,
        ),
        ca.intermediate_key,
    )
    chain = (leaf, ca.intermediate)
    check_x509_svid(chain)  # build, sign, check: the CA runs the profile check too
    return X509Svid(spiffe_id=spiffe_id, cert_chain=chain, private_key=key)


def _write_svid(out: Path, svid: X509Svid, bundle_pem: bytes) -> None:
    _mkdir(out)
    _write(out / "svid.pem", svid.chain_pem(), PUBLIC_MODE)
    _write(out / "svid_key.pem", svid.key_pem(), KEY_MODE)
    _write(out / "bundle.pem", bundle_pem, PUBLIC_MODE)


def generate(
    out: Path,
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    *,
    workloads: Sequence[Workload] = DEFAULT_WORKLOADS,
    svid_ttl: timedelta = DEFAULT_SVID_TTL,
    now: datetime | None = None,
    force: bool = False,
) -> dict[str, str]:
    """Create the trust domain in ``out``; returns {workload name: SPIFFE ID}.

    Refuses (``FileExistsError``) to overwrite an earlier run unless ``force``.
    """
    td = TrustDomain.parse(trust_domain)
    now = now or datetime.now(UTC)
    if (out / "root.pem").exists() and not force:
        raise FileExistsError(f"{out} already holds a dev trust domain (use --force to replace it)")
    _mkdir(out)
    ca = _new_ca(td, now)
    jwt_key = _key()
    kid = os.urandom(12).hex()
    bundle = Bundle(
        trust_domain=td,
        x509_authorities=(ca.root,),
        jwt_authorities=(JwtAuthority(kid=kid, public_key=jwt_key.public_key()),),
        sequence=1,
    )
    bundle_pem = bundle.x509_pem()
    _write(out / "root.pem", _cert_pem(ca.root), PUBLIC_MODE)
    _write(out / "root.key", _key_pem(ca.root_key), KEY_MODE)
    _write(out / "intermediate.pem", _cert_pem(ca.intermediate), PUBLIC_MODE)
    _write(out / "intermediate.key", _key_pem(ca.intermediate_key), KEY_MODE)
    _write(out / "bundle.pem", bundle_pem, PUBLIC_MODE)
    _write(out / "bundle.spiffe.json", _pretty(bundle.encode()), PUBLIC_MODE)
    _write(out / "jwt.key", _key_pem(jwt_key), KEY_MODE)
    issued: dict[str, str] = {}
    for workload in (*workloads, INTRUDER):
        sid = td.child(*workload.path.split("/"))
        issuer = _new_ca(td, now) if workload is INTRUDER else ca
        svid = _issue(issuer, sid, workload.dns_names, now, svid_ttl)
        _write_svid(out / workload.name, svid, bundle_pem)
        issued[workload.name] = str(sid)
    return issued


def _pretty(data: bytes) -> bytes:
    return json.dumps(json.loads(data), indent=2, sort_keys=True).encode() + b"\n"


def _parse_workload(text: str) -> Workload:
    """``NAME=PATH[,DNS...]`` -> Workload (e.g. ``api=svc/api,localhost``)."""
    name, sep, rest = text.partition("=")
    parts = rest.split(",")
    if not sep or not name.isidentifier() or not parts[0] or name == INTRUDER.name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH[,DNS...] (e.g. api=svc/api)")
    return Workload(name, parts[0].strip("/"), tuple(p for p in parts[1:] if p))


def _parse_ttl(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 3600, 12h or 7d")
    return timedelta(seconds=int(number) * units[unit])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="generate.py", description="Create a development SPIFFE trust domain on disk."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--trust-domain", default=DEFAULT_TRUST_DOMAIN)
    parser.add_argument(
        "--workload",
        action="append",
        type=_parse_workload,
        metavar="NAME=PATH[,DNS...]",
        help="an SVID to issue instead of the defaults (repeat)",
    )
    parser.add_argument("--svid-ttl", type=_parse_ttl, default=DEFAULT_SVID_TTL)
    parser.add_argument("--force", action="store_true", help="replace an earlier run")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        issued = generate(
            args.out,
            args.trust_domain,
            workloads=tuple(args.workload or DEFAULT_WORKLOADS),
            svid_ttl=args.svid_ttl,
            force=args.force,
        )
    except (S2SError, InvalidSpiffeId, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write into {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"dev trust domain {args.trust_domain} written to {args.out}")
    for name, sid in issued.items():
        note = "  (foreign root: must be refused)" if name == INTRUDER.name else ""
        print(f"  {name:<12} {sid}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
