"""The running CA's authority loop under a fake clock: the intermediate and JWT key rotate on
schedule, the HTTPS certificate is reissued under the new intermediate, and tokens signed by the
old JWT key keep verifying against the published JWKS until they expire.

The fake clock runs ahead of the wall clock, which TLS peers read, so this test talks to the CA
through its admin socket and looks at the served certificate object instead of handshaking.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from ca_harness import TRUST_DOMAIN, start_ca, stop_ca

from s2s.ca.client import AdminClient
from s2s.core.clock import FakeClock
from s2s.core.errors import Unavailable


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10) -> Any:
    """Poll ``check`` until it returns something truthy, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_rotation_keeps_old_tokens_valid(data_dir: Path, fake_clock: FakeClock) -> None:
    server, task, stop = await start_ca(data_dir, clock=fake_clock)
    admin = AdminClient(server.options.admin_socket)

    async def call(method: str, path: str, body: Any = None, **query: str) -> Any:
        return await asyncio.to_thread(admin.call, method, path, body=body, query=query or None)

    async def active(kind: str) -> set[str]:
        """Ids of the active authorities of ``kind`` (two, briefly, while one takes over)."""
        found = (await call("GET", "/v1/authorities"))["authorities"]
        return {a["id"] for a in found if a["kind"] == kind and a["state"] == "active"}

    mint = {"spiffe_id": f"spiffe://{TRUST_DOMAIN}/w", "audience": ["db"]}
    try:
        (first_intermediate,) = await active("x509-intermediate")
        (first_jwt,) = await active("jwt")

        fake_clock.advance(seconds=20 * 3600 - 60)  # a minute before activation (5/6 of 24 h)
        old = await call("POST", "/v1/jwt/mint", mint)
        assert pyjwt.get_unverified_header(old["token"])["kid"] == first_jwt

        fake_clock.advance(seconds=120)

        async def rotated() -> bool:
            intermediates, jwt_keys = await active("x509-intermediate"), await active("jwt")
            return (
                len(intermediates) == len(jwt_keys) == 1
                and first_intermediate not in intermediates
                and first_jwt not in jwt_keys
            )

        await eventually(rotated, "the intermediate and JWT key to rotate")
        new_intermediate = server.authority.x509_signer.certificate
        await eventually(
            lambda: _async(server.server_svid.cert_chain[1] == new_intermediate),
            "the HTTPS certificate to be reissued under the new intermediate",
        )
        new = await call("POST", "/v1/jwt/mint", mint)
        assert pyjwt.get_unverified_header(new["token"])["kid"] != first_jwt
        jwks = await call("GET", "/v1/bundle", format="spiffe")
        for token in (old["token"], new["token"]):  # the old one has not expired yet
            claims = _verify(token, jwks)
            assert claims["exp"] > fake_clock.now().timestamp()

        # Twin: once the old key's last token has expired, the old key leaves the bundle.
        fake_clock.advance(seconds=4 * 3600 + 60)

        async def old_key_gone() -> bool:
            keys = (await call("GET", "/v1/bundle", format="spiffe"))["keys"]
            return first_jwt not in {k.get("kid") for k in keys}

        await eventually(old_key_gone, "the expired JWT key to leave the bundle")
        jwks = await call("GET", "/v1/bundle", format="spiffe")
        with pytest.raises(StopIteration):
            _verify(old["token"], jwks)
        assert _verify(new["token"], jwks)["sub"] == mint["spiffe_id"]
    finally:
        await stop_ca(server, task, stop)


async def _async(value: Any) -> Any:
    return value


def _verify(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    kid = pyjwt.get_unverified_header(token)["kid"]
    jwk = next(k for k in jwks["keys"] if k.get("kid") == kid)
    key = pyjwt.PyJWK.from_dict(jwk).key
    # exp/iat come from the fake clock (23 h ahead): check them against it, not the wall clock.
    claims: dict[str, Any] = pyjwt.decode(
        token, key, algorithms=["ES256"], audience="db", options={"verify_exp": False,
                                                                  "verify_iat": False}
    )  # fmt: skip
    return claims


async def test_a_crashed_loop_stops_the_ca_with_a_log_line(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, task, _stop = await start_ca(data_dir, prune_interval=0.01)

    async def broken_prune() -> None:
        raise RuntimeError("disk on fire")

    server.prune = broken_prune  # type: ignore[method-assign]
    with pytest.raises(ExceptionGroup) as crashed:
        await asyncio.wait_for(task, 10)
    assert crashed.group_contains(RuntimeError, match="disk on fire")
    assert any(
        r.getMessage() == "ca.loop_crashed" and getattr(r, "loop", None) == "housekeeping"
        for r in caplog.records
    )
    await server.close()


async def test_unavailable_store_is_retried_not_fatal(data_dir: Path) -> None:
    server, task, stop = await start_ca(data_dir, prune_interval=0.01)
    calls = 0

    async def flaky_prune() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Unavailable("store busy")

    server.prune = flaky_prune  # type: ignore[method-assign]
    await eventually(lambda: _async(calls >= 3), "the prune loop to retry past two failures")
    assert not task.done()
    await stop_ca(server, task, stop)
