"""Error codes on the wire map back to the one error hierarchy (used by every client of the CA)."""

from __future__ import annotations

import pytest

from s2s.core import errors
from s2s.core.errors import S2SError, error_from_code

ROUND_TRIP = [
    errors.InvalidRequest,
    errors.InvalidSelector,
    errors.InvalidBundle,
    errors.NotAuthorized,
    errors.AttestationFailed,
    errors.InvalidConfig,
    errors.NotFound,
    errors.Conflict,
    errors.Unavailable,
    errors.StoreError,
    errors.InvalidToken,
    errors.Revoked,
    errors.InvalidSvid,
    errors.InsufficientScope,
]


@pytest.mark.parametrize("cls", ROUND_TRIP, ids=lambda c: c.code)
def test_code_comes_back_as_its_class(cls: type[S2SError]) -> None:
    err = error_from_code(cls.code, "what the server said")
    assert type(err) is cls
    assert err.code == cls.code
    assert "what the server said" in str(err)


def test_invalid_spiffe_id_comes_back_as_invalid_request() -> None:
    # InvalidSpiffeId needs the offending value, which the wire does not carry.
    err = error_from_code("invalid_spiffe_id", "bad id")
    assert type(err) is errors.InvalidRequest


# Raised by the agent about the server at its CA URL; never sent on the wire.
LOCAL_ONLY = {"ca_mismatch", "trust_bundle_mismatch", "trust_domain_mismatch", "not_a_ca"}


def test_every_code_in_the_hierarchy_is_known() -> None:
    known = {cls.code for cls in ROUND_TRIP} | {"invalid_spiffe_id"} | LOCAL_ONLY
    defined = {
        obj.code
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, S2SError) and obj is not S2SError
    }
    assert defined == known


@pytest.mark.parametrize("code", ["teapot", "", "NOT_FOUND", "error"])
def test_unknown_code_is_a_plain_s2s_error_keeping_the_code(code: str) -> None:
    err = error_from_code(code, "m")
    assert type(err) is S2SError
    assert err.code == code
    assert not isinstance(err, errors.Unavailable)
