"""Bearer tokens for the worker's /trace and /metrics and the gate API."""
from __future__ import annotations

import hmac


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>`. Compared in
    constant time, so the time of a refusal says nothing about how much of a
    guess was right; as bytes, since a header may hold any character."""
    expected = f"Bearer {token}".encode("utf-8", "surrogateescape")
    given = (authorization or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected)
