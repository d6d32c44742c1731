"""Rules as data: load, validate, compile and evaluate a versioned rule set.

A rule set (config/rules/*.yaml, or JSON on the rules topic) has a version, a
seed, named parameters, reference data, ledgers (cross-order limits kept in
Redis) and rules. A rule is an id, a description, a condition over the facts
of processors/features.py, an outcome (lane, reason code, official error code
where there is one) and a priority:

    - id: risk.undervaluation
      description: unit price far below the reference price
      when: {fact: min_price_ratio, op: lt, value: {param: price_ratio_floor}}
      outcome: {lane: yellow, reason: UNDERVALUATION}
      priority: 50

Conditions nest with `all`, `any` and `not`; a leaf compares a fact with a
literal, a parameter ({param: name}) or another fact ({fact: name}). The loader
refuses a rule set with a message naming the rule and the field at fault;
`schema()` is the JSON Schema a rule editor can use. Compiled conditions are
plain closures: evaluating the whole set is a few µs per order.
"""
from __future__ import annotations

import csv
import io
import math
import operator
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from processors import compare, decide
from processors.features import FACTS, Observation, Reference, facts, observations
from processors.rules import LANE_STATUS, Case, Hit

Facts = dict[str, Any]
Predicate = Callable[[Facts], bool]

OPS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "eq": ("any", operator.eq), "ne": ("any", operator.ne),
    "gt": ("number", operator.gt), "ge": ("number", operator.ge),
    "lt": ("number", operator.lt), "le": ("number", operator.le),
    "in": ("any", lambda a, b: a in b), "not_in": ("any", lambda a, b: a not in b),
    "is_true": ("bool", lambda a, _b: a is True), "is_false": ("bool", lambda a, _b: a is False),
    "not_empty": ("list", lambda a, _b: bool(a)), "empty": ("list", lambda a, _b: not a),
    "contains_any": ("list", lambda a, b: bool(set(a) & set(b))),
}
UNARY = {"is_true", "is_false", "not_empty", "empty"}
# The leaf `fact op constant` written out, for each operator of OPS that has a
# direct spelling (tests/unit/test_ruleset.py checks they agree with OPS).
_INLINE: dict[str, Callable[[str, Any], Callable[[dict[str, Any]], Any]]] = {
    "eq": lambda n, c: lambda f: f[n] == c, "ne": lambda n, c: lambda f: f[n] != c,
    "gt": lambda n, c: lambda f: f[n] > c, "ge": lambda n, c: lambda f: f[n] >= c,
    "lt": lambda n, c: lambda f: f[n] < c, "le": lambda n, c: lambda f: f[n] <= c,
    "in": lambda n, c: lambda f: f[n] in c, "not_in": lambda n, c: lambda f: f[n] not in c,
    "is_true": lambda n, _c: lambda f: f[n] is True, "is_false": lambda n, _c: lambda f: f[n] is False,
    "not_empty": lambda n, _c: lambda f: bool(f[n]), "empty": lambda n, _c: lambda f: not f[n],
}
ID_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
REASON_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")
CODE_RE = re.compile(r"^-\d{4,6}$")
LEDGER_KINDS = ("annual_amount", "annual_quantity")


class RuleSetError(ValueError):
    """An invalid rule set; the message names the rule and the field."""


# --------------------------------------------------------------------------- loading files


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a rule-set YAML/JSON file and inline the reference files it names,
    giving the self-contained document that is validated and published."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RuleSetError(f"{path}: cannot read rule set: {exc}") from None
    if not isinstance(doc, dict):
        raise RuleSetError(f"{path}: a rule set is a mapping with version, rules, ...")
    ref = doc.get("reference") or {}
    for name in ("positive_list", "goods", "enterprises"):
        entry = ref.get(name)
        if isinstance(entry, dict) and "file" in entry:
            csv_path = (path.parent / entry["file"]).resolve()
            try:
                text = csv_path.read_text(encoding="utf-8")
            except OSError as exc:
                raise RuleSetError(f"reference.{name}.file: {exc}") from None
            ref[name] = {"source": entry.get("source", str(entry["file"])),
                         "rows": list(csv.DictReader(io.StringIO(text)))}
    return doc


# --------------------------------------------------------------------------- validation


def _fail(where: str, msg: str) -> RuleSetError:
    return RuleSetError(f"{where}: {msg}")


def _number(value: Any, where: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except Exception:
        raise _fail(where, f"expected a number, got {value!r}") from None
    if not number.is_finite():  # NaN compares with nothing, Infinity has no cents
        raise _fail(where, f"expected a finite number, got {value!r}")
    return number


def _rate(value: Any, where: str, high: int = 1) -> Decimal:
    # A tax rate as a fraction. The consumption tax is divided by (1 − rate),
    # and a rate out of all proportion (a typo of 13 for 0.13, 7e23) would
    # make every list's tax fail to round: refused here, not on every order.
    rate = _number(value, where)
    if not 0 <= rate < high:
        raise _fail(where, f"must be in [0, {high}), got {value!r}")
    return rate


def _reference(doc: dict[str, Any]) -> Reference:
    ref = doc.get("reference") or {}
    if not isinstance(ref, dict):
        raise _fail("reference", "expected a mapping")

    def rows(name: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
        entry = ref.get(name) or {}
        out = entry.get("rows", []) if isinstance(entry, dict) else None
        if not isinstance(out, list):
            raise _fail(f"reference.{name}", "expected {rows: [...]} or {file: ...}")
        for i, row in enumerate(out):
            if not isinstance(row, dict):
                raise _fail(f"reference.{name}.rows[{i}]", "expected a mapping of column: value")
            missing = [c for c in required if c not in row]
            if missing:
                raise _fail(f"reference.{name}.rows[{i}]", f"missing column(s) {missing}")
        return out

    positive = {}
    for i, r in enumerate(rows("positive_list", ("hs8", "vat_rate", "consumption_rate"))):
        w = f"reference.positive_list.rows[{i}]"
        hs8 = str(r["hs8"])
        if not re.fullmatch(r"\d{8}", hs8):
            raise _fail(w, f"hs8 must be 8 digits, got {hs8!r}")
        cap = str(r.get("annual_qty_cap_kg") or "").strip()
        positive[hs8] = {"vat": _rate(r["vat_rate"], w + ".vat_rate"),
                         "consumption": _rate(r["consumption_rate"], w + ".consumption_rate"),
                         "mfn": _rate(r.get("mfn_rate") or 0, w + ".mfn_rate", 10),
                         "bonded_only": str(r.get("bonded_only", "0")).strip() in ("1", "true", "yes"),
                         "excluded": str(r.get("excluded", "0")).strip() in ("1", "true", "yes"),
                         "cap_kg": _number(cap, w + ".annual_qty_cap_kg") if cap else None}
    goods = {}
    for i, r in enumerate(rows("goods", ("gcode", "reference_price", "unit_weight_kg"))):
        w = f"reference.goods.rows[{i}]"
        goods[str(r["gcode"])] = {"reference_price": _number(r["reference_price"], w + ".reference_price"),
                                  "unit_weight": _number(r["unit_weight_kg"], w + ".unit_weight_kg")}
    enterprises = {}
    for i, r in enumerate(rows("enterprises", ("code", "credit"))):
        w = f"reference.enterprises.rows[{i}]"
        if r["credit"] not in ("advanced", "general", "dishonest"):
            raise _fail(w + ".credit", f"must be advanced, general or dishonest, got {r['credit']!r}")
        # The data-exchange nodes the enterprise sends from (R13; optional,
        # separated by ";"): empty means not known, and nothing is checked.
        nodes = frozenset(n.strip() for n in str(r.get("dxp_nodes") or "").split(";") if n.strip())
        # The certificates it signs with (R13; SHA-256 of each certificate's
        # DER, ";"-separated; optional, empty: not checked).
        certs = frozenset(c.strip().lower().replace(":", "") for c in str(r.get("certs") or "").split(";")
                          if c.strip())
        bad = [c for c in certs if len(c) != 64 or any(ch not in "0123456789abcdef" for ch in c)]
        if bad:
            raise _fail(w + ".certs", f"expected SHA-256 fingerprints (64 hex digits), got {bad[0]!r}")
        enterprises[str(r["code"])] = {"credit": r["credit"],
                                       "negative": str(r.get("negative_list", "0")).strip() in ("1", "true"),
                                       "nodes": nodes, "certs": certs}
    band = ref.get("near_limit_band", [4500, 5000])
    if not (isinstance(band, list) and len(band) == 2):
        raise _fail("reference.near_limit_band", "expected [low, high]")

    def codes(name: str) -> list[str]:
        v = ref.get(name, [])
        if not isinstance(v, list):
            raise _fail(f"reference.{name}", "expected a list of codes")
        return [str(x) for x in v]

    return Reference(positive, goods, enterprises, frozenset(codes("high_risk_countries")),
                     tuple(codes("quarantine_hs_prefixes")), tuple(codes("prohibited_hs_prefixes")),
                     str(doc.get("seed", "")),
                     (float(_number(band[0], "reference.near_limit_band[0]")),
                      float(_number(band[1], "reference.near_limit_band[1]"))))


def _is_name(value: Any) -> bool:
    # A name is looked up in a table: anything but a string (a list, a
    # mapping) is refused as unknown, not raised as unhashable.
    return isinstance(value, str)


def _operand(value: Any, params: dict[str, Any], where: str) -> Callable[[Facts], Any]:
    if isinstance(value, dict):
        if set(value) == {"param"}:
            if not _is_name(value["param"]) or value["param"] not in params:
                raise _fail(where, f"unknown parameter {value['param']!r}")
            const = params[value["param"]]
            return lambda f: const
        if set(value) == {"fact"}:
            if not _is_name(value["fact"]) or value["fact"] not in FACTS:
                raise _fail(where, f"unknown fact {value['fact']!r}")
            name = value["fact"]
            return lambda f: f[name]
        raise _fail(where, "a value is a literal, {param: NAME} or {fact: NAME}")
    return lambda f: value


# all()/any() over a generator build a generator per evaluation; a loop
# short-circuits the same way without one (the rule set runs ~24 per order).
def _all_of(preds: list[Predicate]) -> Predicate:
    return _first_decides(preds, decisive=False)


def _any_of(preds: list[Predicate]) -> Predicate:
    return _first_decides(preds, decisive=True)


def _first_decides(preds: list[Predicate], decisive: bool) -> Predicate:
    """The first predicate whose truth is `decisive` decides (all: False, any: True)."""
    if len(preds) == 1:
        return preds[0]

    def combined(f: Any) -> bool:
        for p in preds:
            if bool(p(f)) is decisive:
                return decisive
        return not decisive
    return combined


def _compile(cond: Any, params: dict[str, Any], where: str, used: list[str]) -> Predicate:
    if not isinstance(cond, dict) or not cond:
        raise _fail(where, "a condition is {all: [...]}, {any: [...]}, {not: ...} or {fact, op, value}")
    if "all" in cond or "any" in cond:
        key = "all" if "all" in cond else "any"
        parts = cond[key]
        if set(cond) != {key} or not isinstance(parts, list) or not parts:
            raise _fail(where, f"{key} takes a non-empty list of conditions and nothing else")
        preds = [_compile(c, params, f"{where}.{key}[{i}]", used) for i, c in enumerate(parts)]
        return _all_of(preds) if key == "all" else _any_of(preds)
    if "not" in cond:
        if set(cond) != {"not"}:
            raise _fail(where, "not takes one condition and nothing else")
        inner = _compile(cond["not"], params, f"{where}.not", used)
        return lambda f: not inner(f)
    unknown = set(cond) - {"fact", "op", "value"}
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)}")
    fact, op = cond.get("fact"), cond.get("op")
    if not _is_name(fact) or fact not in FACTS:
        raise _fail(where + ".fact", f"unknown fact {fact!r}")
    if not _is_name(op) or op not in OPS:
        raise _fail(where + ".op", f"unknown operator {op!r} (expected one of {', '.join(OPS)})")
    kind, fn = OPS[op]
    fact_type = FACTS[fact][0]
    if kind != "any" and kind != fact_type:
        raise _fail(where + ".op", f"operator {op!r} needs a {kind} fact; {fact!r} is a {fact_type}")
    if op in UNARY:
        if "value" in cond:
            raise _fail(where + ".value", f"operator {op!r} takes no value")
        used.append(fact)
        return _INLINE[op](fact, None)
    if "value" not in cond:
        raise _fail(where + ".value", f"operator {op!r} needs a value")
    value = cond["value"]
    operand = _operand(value, params, where + ".value")
    listed = op in ("in", "not_in", "contains_any")
    used.append(fact)
    if isinstance(value, dict) and "fact" in value:
        other = FACTS[value["fact"]][0]
        if (kind == "number" and other != "number") or (listed and other != "list"):
            raise _fail(where + ".value", f"operator {op!r} needs a {'list' if listed else 'number'} "
                        f"fact; {value['fact']!r} is a {other}")
        return lambda f: fn(f[fact], operand(f))
    # A literal or a parameter is the same for every order: bound once, and the
    # comparison written out (OPS's functions say the same; a call per leaf less).
    # Its type is checked here, a parameter's too: a comparison that cannot be
    # made would fail for every order, and each would go to manual review.
    const = operand({})
    shown = f"{value['param']!r} is {const!r}" if isinstance(value, dict) else f"got {value!r}"
    if kind == "number" and (isinstance(const, bool) or not isinstance(const, (int, float))
                             or not math.isfinite(const)):
        raise _fail(where + ".value", f"operator {op!r} compares numbers, {shown}")
    if listed and not isinstance(const, list):
        raise _fail(where + ".value", f"operator {op!r} needs a list, {shown}")
    if op == "contains_any" and not all(isinstance(x, (str, int, float)) for x in const):
        raise _fail(where + ".value", f"operator {op!r} needs a list of codes or numbers, {shown}")
    inline = _INLINE.get(op)
    return inline(fact, const) if inline else lambda f: fn(f[fact], const)


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    lane: str
    reason: str
    code: str
    info: str
    priority: int
    when: Predicate
    facts: tuple[str, ...]


@dataclass(frozen=True)
class Ledger:
    id: str
    kind: str
    limit: Decimal
    reason: str
    code: str
    limit_cents: int  # the amount ledger's limit as the reservation counts it


def _outcome(o: Any, where: str) -> tuple[str, str, str, str]:
    if not isinstance(o, dict):
        raise _fail(where, "expected {lane, reason, code?, info?}")
    unknown = set(o) - {"lane", "reason", "code", "info"}
    if unknown:
        raise _fail(where, f"unknown key(s) {sorted(unknown)}")
    lane, reason, code = o.get("lane"), o.get("reason"), str(o.get("code", ""))
    if not _is_name(lane) or lane not in LANE_STATUS:
        raise _fail(where + ".lane", f"must be one of {', '.join(LANE_STATUS)}, got {lane!r}")
    if not isinstance(reason, str) or not REASON_RE.match(reason):
        raise _fail(where + ".reason", f"an UPPER_SNAKE reason code is required, got {reason!r}")
    if code and not CODE_RE.match(code):
        raise _fail(where + ".code", f"an official error code looks like -621005, got {code!r}")
    return lane, reason, code, str(o.get("info", ""))


def compile_ruleset(doc: dict[str, Any]) -> "RuleEngine":
    if not isinstance(doc, dict):
        raise RuleSetError("a rule set is a mapping with version, rules, ...")
    unknown = set(doc) - {"version", "description", "seed", "parameters", "reference", "ledgers", "rules"}
    if unknown:
        raise _fail("(top level)", f"unknown key(s) {sorted(unknown)}")
    version = doc.get("version")
    if not isinstance(version, str) or not version.strip():
        raise _fail("version", "a non-empty version string is required")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _fail("parameters", "expected a mapping of name: value")
    ref = _reference(doc)
    ledgers = []
    if not isinstance(doc.get("ledgers") or [], list):
        raise _fail("ledgers", "expected a list of ledgers")
    for i, led in enumerate(doc.get("ledgers") or []):
        where = f"ledgers[{i}]"
        if not isinstance(led, dict) or "id" not in led:
            raise _fail(where, "a ledger needs an id")
        where = f"ledger {led['id']!r}"
        if led.get("kind") not in LEDGER_KINDS:
            raise _fail(where + ".kind", f"must be one of {', '.join(LEDGER_KINDS)}")
        lane, reason, code, _info = _outcome(led.get("outcome"), where + ".outcome")
        if lane != "reject":
            raise _fail(where + ".outcome.lane", "a ledger limit rejects")
        limit = Decimal(0)
        if led["kind"] == "annual_amount":
            raw = led.get("limit")
            raw = params.get(raw["param"]) if isinstance(raw, dict) and _is_name(raw.get("param")) else raw
            limit = _number(raw, where + ".limit")
        ledgers.append(Ledger(str(led["id"]), led["kind"], limit, reason, code, int(limit * 100)))
    rules, seen = [], set()
    raw_rules = doc.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise _fail("rules", "a non-empty list of rules is required")
    for i, r in enumerate(raw_rules):
        if not isinstance(r, dict):
            raise _fail(f"rules[{i}]", "a rule is a mapping")
        rid = r.get("id")
        if not isinstance(rid, str) or not ID_RE.match(rid):
            raise _fail(f"rules[{i}].id", f"a dotted lower-case id is required, got {rid!r}")
        where = f"rule {rid!r}"
        if rid in seen:
            raise _fail(where, "duplicate rule id")
        seen.add(rid)
        unknown = set(r) - {"id", "description", "when", "outcome", "priority"}
        if unknown:
            raise _fail(where, f"unknown key(s) {sorted(unknown)}")
        if not isinstance(r.get("description"), str) or not r["description"].strip():
            raise _fail(where + ".description", "a description is required")
        priority = r.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise _fail(where + ".priority", f"an integer is required, got {priority!r}")
        used: list[str] = []
        pred = _compile(r.get("when"), params, where + ".when", used)
        lane, reason, code, info = _outcome(r.get("outcome"), where + ".outcome")
        rules.append(Rule(rid, r["description"].strip(), lane, reason, code, info or r["description"].strip(),
                          priority, pred, tuple(dict.fromkeys(used))))
    rules.sort(key=lambda x: -x.priority)
    return RuleEngine(version.strip(), rules, ledgers, ref, doc)


# --------------------------------------------------------------------------- engine


class RuleEngine:
    """The spine's comparison rules plus a compiled data rule set."""

    def __init__(self, version: str, rules: list[Rule], ledgers: list[Ledger], ref: Reference,
                 document: dict[str, Any]):
        self.version = version
        self.rules = rules
        self.ledgers = ledgers
        self.reference = ref
        self.document = document

    def facts(self, case: Case) -> Facts:
        f = case.features.get("_facts")
        if f is None:
            f = facts(case, self.reference)
            case.features["_facts"] = f
        return f

    def evaluate(self, case: Case) -> list[Hit]:
        f = self.facts(case)
        hits = compare.compare(case)
        for r in self.rules:
            if r.when(f):
                evidence = {name: _show(f[name]) for name in r.facts}
                hits.append(Hit(r.id, r.reason, LANE_STATUS[r.lane], r.info, r.code, evidence, r.lane))
        return hits

    def observations(self, case: Case, order_key: str) -> list[Observation]:
        return observations(case, order_key, self.reference)

    def quota_requests(self, case: Case, order_key: str) -> list[decide.QuotaRequest]:
        out = []
        base = decide.quota_request(case, order_key)
        for led in self.ledgers:
            if led.kind == "annual_amount":
                out.append(decide.QuotaRequest(base.buyer, base.year, base.order, base.amount,
                                               led.limit_cents, "", led.id, led.reason, led.code))
            else:
                out.extend(self._quantity_requests(case, base, led))
        return out

    def _quantity_requests(self, case: Case, base: decide.QuotaRequest, led: Ledger) -> list[decide.QuotaRequest]:
        grams: dict[str, int] = {}
        caps: dict[str, Decimal] = {}
        for line in case.docs["621"]["lines"]:
            hs8 = str(line.get("gcode", ""))[:8]
            entry = self.reference.positive.get(hs8)
            # Caps are in kg; the legal quantity (qty1) is in kg when unit1 is 035.
            if entry and entry["cap_kg"] is not None and line.get("unit1") == "035":
                grams[hs8] = grams.get(hs8, 0) + int(compare.dec(line, "qty1") * 1000)
                caps[hs8] = entry["cap_kg"]
        return [decide.QuotaRequest(base.buyer, base.year, base.order, g, int(caps[hs8] * 1000),
                                    ledger=f"qty:{hs8}", rule=led.id, reason=led.reason, code=led.code)
                for hs8, g in grams.items()]

    def decision_extras(self, case: Case) -> dict[str, Any]:
        return {"tax": self.facts(case)["_tax"]}


def _show(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    return value


def load(path: str | Path) -> RuleEngine:
    return compile_ruleset(load_file(path))


DEFAULT_RULESET = Path(__file__).resolve().parent.parent / "config" / "rules" / "default.yaml"


def schema() -> dict[str, Any]:
    """JSON Schema of a rule-set document, for rule editors and tooling."""
    value = {"oneOf": [{"type": ["number", "string", "boolean", "array"]},
                       {"type": "object", "properties": {"param": {"type": "string"}}, "required": ["param"],
                        "additionalProperties": False},
                       {"type": "object", "properties": {"fact": {"enum": sorted(FACTS)}}, "required": ["fact"],
                        "additionalProperties": False}]}
    condition = {"oneOf": [
        {"type": "object", "properties": {"all": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}}},
         "required": ["all"], "additionalProperties": False},
        {"type": "object", "properties": {"any": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/condition"}}},
         "required": ["any"], "additionalProperties": False},
        {"type": "object", "properties": {"not": {"$ref": "#/$defs/condition"}}, "required": ["not"],
         "additionalProperties": False},
        {"type": "object", "properties": {"fact": {"enum": sorted(FACTS)}, "op": {"enum": sorted(OPS)},
                                          "value": {"$ref": "#/$defs/value"}},
         "required": ["fact", "op"], "additionalProperties": False},
    ]}
    outcome = {"type": "object", "required": ["lane", "reason"], "additionalProperties": False,
               "properties": {"lane": {"enum": list(LANE_STATUS)}, "reason": {"type": "string", "pattern": REASON_RE.pattern},
                              "code": {"type": "string", "pattern": CODE_RE.pattern}, "info": {"type": "string"}}}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "clearance rule set",
        "type": "object",
        "required": ["version", "rules"],
        "additionalProperties": False,
        "$defs": {"condition": condition, "value": value, "outcome": outcome},
        "properties": {
            "version": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "seed": {"type": "string", "description": "seed of the reproducible random selection"},
            "parameters": {"type": "object"},
            "reference": {"type": "object"},
            "ledgers": {"type": "array", "items": {"type": "object", "required": ["id", "kind", "outcome"],
                                                   "properties": {"id": {"type": "string"},
                                                                  "kind": {"enum": list(LEDGER_KINDS)},
                                                                  "limit": {"$ref": "#/$defs/value"},
                                                                  "description": {"type": "string"},
                                                                  "outcome": {"$ref": "#/$defs/outcome"}}}},
            "rules": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["id", "description", "when", "outcome"], "additionalProperties": False,
                "properties": {"id": {"type": "string", "pattern": ID_RE.pattern}, "description": {"type": "string"},
                               "when": {"$ref": "#/$defs/condition"}, "outcome": {"$ref": "#/$defs/outcome"},
                               "priority": {"type": "integer"}}}},
        },
        "x-facts": {name: {"type": t, "description": d} for name, (t, d) in FACTS.items()},
    }
