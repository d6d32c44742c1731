"""The shape every rule result takes, and the outcome ordering.

A rule set is anything with `evaluate(case) -> list[Hit]`; the spine ships the
comparison rules and the two purchase limits, and the policy/risk engine plugs
in through the same interface without changing the spine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

RELEASE = 800
REVIEW = 300
INSPECT = 500
REJECT = 100

OUTCOMES = {RELEASE: "release", REVIEW: "manual_review", INSPECT: "inspect", REJECT: "reject"}
LANES = {RELEASE: "green", REVIEW: "yellow", INSPECT: "red", REJECT: "reject"}
# Most severe first: one reject beats any inspect, which beats any review.
SEVERITY = {REJECT: 3, INSPECT: 2, REVIEW: 1, RELEASE: 0}


@dataclass(frozen=True)
class Hit:
    rule: str  # stable rule id, e.g. "compare.actural_paid"
    reason: str  # reason code, e.g. "ACTURAL_PAID_FORMULA"
    status: int  # CEB status this hit asks for (100/300/500/800)
    info: str  # readable explanation for the receipt and the audit trail
    code: str = ""  # official GACC error code where one exists (e.g. "-621005")
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rule": self.rule, "reason": self.reason, "status": self.status, "info": self.info}
        if self.code:
            d["code"] = self.code
        if self.evidence:
            d["evidence"] = self.evidence
        return d


@dataclass
class Case:
    """One complete match: the four documents of an order and its timings."""

    docs: dict[str, dict[str, Any]]
    first_ms: int
    complete_ms: int
    complete_record_ms: int


class RuleSet(Protocol):
    version: str

    def evaluate(self, case: Case) -> list[Hit]: ...


def worst_status(hits: list[Hit]) -> int:
    status = RELEASE
    for h in hits:
        if SEVERITY[h.status] > SEVERITY[status]:
            status = h.status
    return status
