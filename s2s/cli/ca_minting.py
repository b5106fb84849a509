"""``s2s-ca x509 mint`` and ``s2s-ca jwt mint``: SVIDs minted by an administrator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from s2s.cli.ca_common import DURATION, Ctx, call, emit_json, json_option, pass_ctx
from s2s.cli.output_dir import OutputDir, OutputFile

__all__ = ["jwt", "svid_files", "x509"]


@click.group()
def x509() -> None:
    """X509-SVIDs."""


@x509.command("mint")
@click.option("--spiffe-id", required=True)
@click.option("--ttl", type=DURATION, help="Lifetime (capped by the CA).")
@click.option("--dns-name", "dns_names", multiple=True)
@click.option(
    "--write", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
    help="Directory for svid.pem, svid_key.pem (0600) and bundle.pem.",
)  # fmt: skip
@json_option
@pass_ctx
def x509_mint(ctx: Ctx, *, spiffe_id: str, ttl: int | None, dns_names: tuple[str, ...],
              out_dir: Path, as_json: bool) -> None:  # fmt: skip
    """Mint an X509-SVID and write svid.pem (leaf, intermediate), svid_key.pem, bundle.pem."""
    body: dict[str, Any] = {"spiffe_id": spiffe_id, "dns_names": list(dns_names)}
    if ttl:
        body["ttl"] = ttl
    # Checked before minting: a refused directory costs no SVID and says why at once.
    with call(lambda: OutputDir.open(out_dir)) as out:
        minted = call(lambda: ctx.client().post("/v1/x509/mint", body))
        files = call(lambda: out.write(svid_files(minted)))
    summary = {k: minted[k] for k in ("spiffe_id", "serial", "expires_at")}
    summary["files"] = [str(f) for f in files]
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {', '.join(summary['files'])} (expires {minted['expires_at']})")


def svid_files(minted: dict[str, Any]) -> list[OutputFile]:
    """svid.pem (leaf, intermediate), svid_key.pem (0600) and bundle.pem of a minted SVID."""
    return [
        OutputFile("svid.pem", minted["chain_pem"].encode(), 0o644),
        OutputFile("svid_key.pem", minted["key_pem"].encode(), 0o600),
        OutputFile("bundle.pem", minted["bundle_pem"].encode(), 0o644),
    ]


@click.group()
def jwt() -> None:
    """JWT-SVIDs."""


@jwt.command("mint")
@click.option("--spiffe-id", required=True)
@click.option("--audience", "audience", required=True, multiple=True, help="Repeat for several.")
@click.option("--ttl", type=DURATION, help="Lifetime (capped by the CA).")
@json_option
@pass_ctx
def jwt_mint(ctx: Ctx, spiffe_id: str, audience: tuple[str, ...], ttl: int | None,
             as_json: bool) -> None:  # fmt: skip
    """Mint a JWT-SVID and print it."""
    body: dict[str, Any] = {"spiffe_id": spiffe_id, "audience": list(audience)}
    if ttl:
        body["ttl"] = ttl
    minted = call(lambda: ctx.client().post("/v1/jwt/mint", body))
    emit_json(minted) if as_json else click.echo(minted["token"])


# ---- revocation -------------------------------------------------------------------------------
