"""Bearer tokens for the worker's /trace and /metrics and the gate API (one shared, or one per gate)."""
from __future__ import annotations

import hmac


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `Bearer <token>`. Compared in
    constant time, so the time of a refusal says nothing about how much of a
    guess was right; as bytes, since a header may hold any character."""
    expected = f"Bearer {token}".encode("utf-8", "surrogateescape")
    given = (authorization or "").encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, expected)


def gate_tokens(spec: str) -> dict[str, str]:
    """CLEARANCE_GATE_TOKENS, `GATE=TOKEN,GATE=TOKEN`, as {gate id: token}: each
    gate its own token, so a gate can record exits in its own name only."""
    out: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        gate, sep, token = part.partition("=")
        gate, token = gate.strip(), token.strip()
        if not sep or not gate or not token:
            raise ValueError(f"CLEARANCE_GATE_TOKENS: {gate or part.strip()[:20]!r} is not GATE=TOKEN")
        if gate in out:
            raise ValueError(f"CLEARANCE_GATE_TOKENS: gate {gate!r} is named twice")
        out[gate] = token
    if len(set(out.values())) != len(out):
        raise ValueError("CLEARANCE_GATE_TOKENS: two gates share a token (one could act as the other)")
    return out


def bearer_gate(authorization: str | None, tokens: dict[str, str]) -> str | None:
    """The gate whose token the header carries, None if none's. Every token is
    compared, each in constant time."""
    found = None
    for gate, token in tokens.items():
        if bearer_ok(authorization, token):
            found = gate
    return found
