"""The shape every rule result takes, lanes, and the outcome ordering.

A rule set is anything with `evaluate(case) -> list[Hit]` and a `version`;
the spine ships the comparison rules and the two purchase limits
(processors/decide.SpineRules), the policy and risk engine
(processors/ruleset.RuleEngine) adds the data-driven rules through the same
interface.

Lanes follow ASYCUDA selectivity (DOMAIN.md §4.1): green → 800 release,
blue → 800 with a post-clearance audit flag, yellow → 300 manual review,
red → 500 inspect; validation and policy failures → 100 reject.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

RELEASE = 800
REVIEW = 300
INSPECT = 500
REJECT = 100

OUTCOMES = {RELEASE: "release", REVIEW: "manual_review", INSPECT: "inspect", REJECT: "reject"}
LANE_STATUS = {"green": RELEASE, "blue": RELEASE, "yellow": REVIEW, "red": INSPECT, "reject": REJECT}
STATUS_LANE = {RELEASE: "green", REVIEW: "yellow", INSPECT: "red", REJECT: "reject"}
# Most severe first: one reject beats any red, which beats any yellow, ...
LANE_SEVERITY = {"reject": 4, "red": 3, "yellow": 2, "blue": 1, "green": 0}
LANES = STATUS_LANE  # status -> default lane


@dataclass(frozen=True)
class Hit:
    rule: str  # stable rule id, e.g. "compare.actural_paid"
    reason: str  # reason code, e.g. "ACTURAL_PAID_FORMULA"
    status: int  # CEB status this hit asks for (100/300/500/800)
    info: str  # readable explanation for the receipt and the audit trail
    code: str = ""  # official GACC error code where one exists (e.g. "-621005")
    evidence: dict[str, Any] = field(default_factory=dict)
    lane: str = ""  # "" means the status's default lane

    @property
    def effective_lane(self) -> str:
        return self.lane or STATUS_LANE[self.status]

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rule": self.rule, "reason": self.reason, "status": self.status,
                             "lane": self.effective_lane, "info": self.info}
        if self.code:
            d["code"] = self.code
        if self.evidence:
            d["evidence"] = self.evidence
        return d


@dataclass
class Case:
    """One complete match: the four documents of an order, its timings, and
    the cross-order features the adapter looked up for it."""

    docs: dict[str, dict[str, Any]]
    first_ms: int
    complete_ms: int
    complete_record_ms: int
    features: dict[str, Any] = field(default_factory=dict)
    # Per document type, how it arrived (form, sender, BaseTransfer): the
    # worker's arrival metadata.
    metas: dict[str, dict[str, Any]] = field(default_factory=dict)


class RuleSet(Protocol):
    version: str

    def evaluate(self, case: Case) -> list[Hit]: ...


def worst_lane(hits: list[Hit]) -> str:
    lane = "green"
    for h in hits:
        if LANE_SEVERITY[h.effective_lane] > LANE_SEVERITY[lane]:
            lane = h.effective_lane
    return lane


def worst_status(hits: list[Hit]) -> int:
    return LANE_STATUS[worst_lane(hits)]
