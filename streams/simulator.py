"""A platform simulator: realistic, internally consistent CEB traffic.

Each generated order is the four documents (311/411/511/621) in raw CEB field
form plus the outcome the processor must reach, so the demo, tests and
benchmarks can check every decision. Scenarios inject the failures customs
sees: amount and consignee mismatches, buyer ≠ payer, over-limit purchases,
missing documents, duplicates.
"""
from __future__ import annotations

import base64
import random
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from config.settings import Settings

import orjson
from lxml import etree

from config.settings import DEFAULT_DXP_ID
from topics import xmlsig
from topics.ceb import KINDS, NS, dxp_wrap, field_specs

SCENARIOS = {
    "ok": 0.80,
    "amount_mismatch": 0.03,
    "consignee_mismatch": 0.03,
    "buyer_not_payer": 0.03,
    "line_mismatch": 0.02,
    "over_single_limit": 0.03,
    "missing_payment": 0.03,
    "missing_waybill": 0.03,
}
EXPECTED = {
    "ok": (800, ""), "amount_mismatch": (100, "PAYMENT_AMOUNT_MISMATCH"),
    "consignee_mismatch": (100, "CONSIGNEE_MISMATCH"), "buyer_not_payer": (100, "BUYER_NOT_PAYER"),
    "line_mismatch": (100, "LINE_VALUE_MISMATCH"), "over_single_limit": (100, "SINGLE_LIMIT_EXCEEDED"),
    "missing_payment": (100, "MATCH_TIMEOUT"), "missing_waybill": (100, "MATCH_TIMEOUT"),
    "annual_limit": (100, "ANNUAL_LIMIT_EXCEEDED"),
}
# name, goods code, model, origin, unit price, unit weight kg (as in config/reference/goods.csv)
GOODS = [("面霜", "3304990000", "50ml/瓶|品牌A", "116", Decimal("189.00"), Decimal("0.15")),
         ("维生素片", "2106909090", "60粒/瓶|品牌B", "502", Decimal("99.50"), Decimal("0.12")),
         ("婴儿奶粉", "1901101000", "800g/罐|品牌C", "609", Decimal("268.00"), Decimal("0.95")),
         ("洗发水", "3305100000", "400ml/瓶|品牌D", "116", Decimal("79.90"), Decimal("0.45")),
         ("手表", "9102110000", "钢带|品牌E", "331", Decimal("1299.00"), Decimal("0.20")),
         ("口红", "3304100000", "3.5g/支|品牌F", "305", Decimal("230.00"), Decimal("0.05"))]
_W = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
# Platforms: ebpCode, name, and the prefixes that keep their waybill and
# payment numbers apart. Each numbers its own orders, so with several of them
# the same orderNo is declared by more than one (it is unique per platform).
PLATFORMS = [("4601XXXXAA", "示例跨境平台有限公司", "YT", "PAY"),
             ("4601XXXXAB", "示例海淘平台有限公司", "ZT", "PBY"),
             ("4601XXXXAC", "示例全球购平台有限公司", "ST", "PCY")]


def resident_id(rng: random.Random) -> str:
    body = f"4601{rng.randint(0, 99):02d}{rng.randint(1960, 2004)}{rng.randint(1, 12):02d}" \
           f"{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, _W)) % 11]


@dataclass
class GeneratedOrder:
    order_no: str
    scenario: str
    expected_status: int
    expected_reason: str
    # doc type -> (head, lines); a missing document is absent
    docs: dict[str, tuple[dict[str, str], list[dict[str, str]]]] = field(default_factory=dict)
    logistics_no: str = ""

    @property
    def ebp_code(self) -> str:
        for t in ("311", "411", "621"):
            if t in self.docs:
                return self.docs[t][0]["ebpCode"]
        return ""


def _money(d: Decimal) -> str:
    return f"{d.quantize(Decimal('0.01'))}"


def make_order(seq: int, rng: random.Random, scenario: str = "ok", prefix: str = "HN",
               buyer_id: str | None = None, day: str = "20261126", platform: int = 0) -> GeneratedOrder:
    order_no = f"{prefix}{day}{seq:010d}"
    guid = lambda: str(uuid.UUID(int=rng.getrandbits(128))).upper()  # noqa: E731
    lines: list[tuple[int, str, str, str, str, Decimal, int]] = []
    weights: list[Decimal] = []
    # Ordinary baskets stay well under the ¥5,000 single-purchase limit.
    while not lines or sum(p * q for (*_, p, q) in lines) > 4000:
        lines, weights = [], []
        for g in range(1, rng.randint(1, 3) + 1):
            name, hs, model, country, price, unit_weight = rng.choice(GOODS)
            qty = rng.randint(1, 3)
            lines.append((g, name, hs, model, country, price, qty))
            weights.append(unit_weight * qty)
    if scenario == "over_single_limit":
        lines = [(1, "手表", "9102110000", "钢带|品牌E", "331", Decimal("2600.00"), 2)]
        weights = [Decimal("0.40")]
    goods_value = sum((p * q for (_, _, _, _, _, p, q) in lines), Decimal(0))
    freight = Decimal(rng.choice(["0", "8", "10", "15"]))
    discount = Decimal(rng.choice(["0", "0", "5", "10"]))
    tax = ((goods_value + freight) * Decimal("0.091")).quantize(Decimal("0.01"))
    paid = goods_value + freight + tax - discount
    buyer = buyer_id or resident_id(rng)
    name = rng.choice(["张三", "李四", "王五", "赵六", "陈七"])
    phone = f"13{rng.randint(0, 999999999):09d}"
    address = f"海南省海口市美兰区示例路{rng.randint(1, 999)}号"
    ebp, ebp_name, ln_prefix, pay_prefix = PLATFORMS[platform]
    ebc, pay, logi, agent = "4601XXXXBB", "4403XXXXPP", "4601XXXXLL", "4601XXXXCC"
    # Waybill numbers and payment serials are unique (R9): runs with another
    # orderNo prefix get their own, as a platform's separate numbering would.
    pay_tx = f"{pay_prefix}{prefix}{day}{seq:012d}"
    logistics_no = f"{ln_prefix}{prefix}{day}{seq:010d}"
    app_time = f"{day}101500"

    order_head = {
        "guid": guid(), "appType": "1", "appTime": app_time, "appStatus": "2", "orderType": "I",
        "orderNo": order_no, "ebpCode": ebp, "ebpName": ebp_name, "ebcCode": ebc,
        "ebcName": "示例电商企业有限公司", "goodsValue": _money(goods_value), "freight": _money(freight),
        "discount": _money(discount), "taxTotal": _money(tax), "acturalPaid": _money(paid), "currency": "142",
        "buyerRegNo": f"u{seq}" if platform == 0 else f"u{platform}-{seq}", "buyerName": name, "buyerTelephone": phone, "buyerIdType": "1",
        "buyerIdNumber": buyer, "payCode": pay, "payName": "示例支付公司", "payTransactionId": pay_tx,
        "consignee": name, "consigneeTelephone": phone, "consigneeAddress": address,
    }
    order_lines = [{"gnum": str(g), "itemNo": f"SKU-{hs[:6]}", "itemName": nm, "gmodel": model, "unit": "007",
                    "qty": str(q), "price": _money(p), "totalPrice": _money(p * q), "currency": "142",
                    "country": c} for (g, nm, hs, model, c, p, q) in lines]
    payment_head = {
        "guid": guid(), "appType": "1", "appTime": app_time, "appStatus": "2", "payCode": pay,
        "payName": "示例支付公司", "payTransactionId": pay_tx, "orderNo": order_no, "ebpCode": ebp,
        "ebpName": ebp_name, "payerIdType": "1", "payerIdNumber": buyer, "payerName": name,
        "amountPaid": _money(paid), "currency": "142", "payTime": app_time,
    }
    weight = sum(weights, Decimal("0.10"))  # goods plus packaging
    waybill_head = {
        "guid": guid(), "appType": "1", "appTime": app_time, "appStatus": "2", "logisticsCode": logi,
        "logisticsName": "示例物流公司", "logisticsNo": logistics_no, "orderNo": order_no,
        "freight": _money(freight), "insuredFee": "0", "currency": "142", "weight": _money(weight),
        "packNo": "1", "consignee": name, "consigneeAddress": address, "consigneeTelephone": phone,
    }
    inventory_head = {
        "guid": guid(), "appType": "1", "appTime": app_time, "appStatus": "2", "orderNo": order_no,
        "ebpCode": ebp, "ebpName": ebp_name, "ebcCode": ebc, "ebcName": "示例电商企业有限公司",
        "logisticsNo": logistics_no, "logisticsCode": logi, "logisticsName": "示例物流公司",
        "copNo": f"COP{seq:012d}" if platform == 0 else f"COP{platform}{seq:011d}", "assureCode": ebc, "emsNo": "T6401W000001", "ieFlag": "I",
        "declTime": day, "customsCode": "6401", "portCode": "6401", "buyerIdType": "1",
        "buyerIdNumber": buyer, "buyerName": name, "buyerTelephone": phone, "consigneeAddress": address,
        "agentCode": agent, "agentName": "示例报关公司", "areaCode": "4601XXXXWW", "areaName": "示例保税仓储公司",
        "tradeMode": "1210", "trafMode": "4", "country": "142", "freight": _money(freight), "insuredFee": "0",
        "currency": "142", "packNo": "1", "grossWeight": _money(weight),
        "netWeight": _money(weight - Decimal("0.1")),
    }
    inventory_lines = [{"gnum": str(g), "itemRecordNo": f"{g:04d}", "itemNo": f"SKU-{hs[:6]}", "itemName": nm,
                        "gcode": hs, "gname": nm, "gmodel": model, "country": c, "currency": "142",
                        "qty": str(q), "unit": "007", "qty1": str(q), "unit1": "007", "price": _money(p),
                        "totalPrice": _money(p * q)} for (g, nm, hs, model, c, p, q) in lines]

    if scenario == "amount_mismatch":
        payment_head["amountPaid"] = _money(paid + 1)
    elif scenario == "consignee_mismatch":
        waybill_head["consigneeAddress"] = address + "B座"
    elif scenario == "buyer_not_payer":
        payment_head["payerIdNumber"] = resident_id(rng)
    elif scenario == "line_mismatch":
        inventory_lines[0]["qty"] = str(int(inventory_lines[0]["qty"]) + 1)
        inventory_lines[0]["totalPrice"] = _money(Decimal(inventory_lines[0]["price"])
                                                  * int(inventory_lines[0]["qty"]))
    status, reason = EXPECTED.get(scenario, (800, ""))
    go = GeneratedOrder(order_no, scenario, status, reason, logistics_no=logistics_no)
    go.docs = {"311": (order_head, order_lines), "411": (payment_head, []), "511": (waybill_head, []),
               "621": (inventory_head, inventory_lines)}
    if scenario == "missing_payment":
        del go.docs["411"]
    elif scenario == "missing_waybill":
        del go.docs["511"]
    return go


def generate(n: int, seed: int = 1, mix: dict[str, float] | None = None, start: int = 0,
             prefix: str = "HN", platforms: int = 1) -> Iterator[GeneratedOrder]:
    """n orders; with several platforms, each order is one platform's next
    order by its own numbering, so orderNos recur across platforms."""
    rng = random.Random(seed)
    mix = mix or SCENARIOS
    names, weights = list(mix), list(mix.values())
    counters = [start] * min(max(platforms, 1), len(PLATFORMS))
    for _ in range(n):
        p = rng.randrange(len(counters)) if len(counters) > 1 else 0
        seq, counters[p] = counters[p], counters[p] + 1
        yield make_order(seq, rng, rng.choices(names, weights)[0], prefix=prefix, platform=p)


# --------------------------------------------------------------------------- encoding

# The simulated declaring agent's signing key and certificate (SM2-with-SM3,
# made for the simulator; config/reference/enterprises.csv registers its
# fingerprint for 4601XXXXCC): messages the XSD requires a signature on are
# signed as an agent's UKey client would sign them.
_SIGNER = orjson.loads((Path(__file__).with_name("simulator_signer.json")).read_bytes())
_SIGNER_KEY = int(_SIGNER["privateKey"], 16)
_SIGNER_CERT = base64.b64decode(_SIGNER["certificate"])
SIGNED_TYPES = ("621", "623", "625")


def sign(message: bytes) -> bytes:
    """A CEB XML message with the simulated agent's enveloped signature
    appended, written in canonical form as the official samples are (the
    receiver then need not canonicalise it again: topics/xmlsig.py)."""
    root = etree.fromstring(message)
    xmlsig.sign_sm2(root, _SIGNER_KEY, _SIGNER_CERT, _SIGNER["keyName"])
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(root, method="c14n")


_SENDER = {"311": "4601XXXXAA", "411": "4403XXXXPP", "511": "4601XXXXLL", "621": "4601XXXXCC",
           "623": "4601XXXXCC", "625": "4601XXXXCC"}


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_xml(doc_type: str, docs: list[tuple[dict[str, str], list[dict[str, str]]]], signed: bool = True) -> bytes:
    """One CEB message (≤100 documents) in XSD element order; a 621, 623 or 625
    signed unless `signed` is false (the XSD then finds the signature missing)."""
    kind = KINDS[doc_type]
    specs = field_specs()
    head_order = [f.name for f in specs[kind.head]]
    line_order = [f.name for f in specs[kind.lines]] if kind.lines else []
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ceb:{kind.root} guid="{str(uuid.uuid4()).upper()}" '
             f'version="1.0" xmlns:ceb="{NS}">']
    for head, lines in docs:
        if kind.wrapper:
            parts.append(f"<ceb:{kind.wrapper}>")
        parts.append(f"<ceb:{kind.head}>")
        parts.extend(f"<ceb:{k}>{_esc(head[k])}</ceb:{k}>" for k in head_order if k in head)
        parts.append(f"</ceb:{kind.head}>")
        for line in lines:
            parts.append(f"<ceb:{kind.lines}>")
            parts.extend(f"<ceb:{k}>{_esc(line[k])}</ceb:{k}>" for k in line_order if k in line)
            parts.append(f"</ceb:{kind.lines}>")
        if kind.wrapper:
            parts.append(f"</ceb:{kind.wrapper}>")
    parts.append(f"<ceb:BaseTransfer><ceb:copCode>{_SENDER[doc_type]}</ceb:copCode><ceb:copName>示例企业</ceb:copName>"
                 f"<ceb:dxpMode>DXP</ceb:dxpMode><ceb:dxpId>{dxp_sender(doc_type)}</ceb:dxpId></ceb:BaseTransfer>")
    parts.append(f"</ceb:{kind.root}>")
    out = "".join(parts).encode("utf-8")
    return sign(out) if signed and doc_type in SIGNED_TYPES else out


# The node a simulated sender's DxpMsg comes from (at most 16 characters), and
# the receiving node it names: this processor's default (CLEARANCE_DXP_ID).
def dxp_sender(doc_type: str) -> str:
    return "DXP" + _SENDER[doc_type]


def to_dxp(doc_type: str, docs: list[tuple[dict[str, str], list[dict[str, str]]]],
           receiver: str = DEFAULT_DXP_ID) -> bytes:
    """The CEB XML message of `to_xml` in the DxpMsg envelope of a terminal node."""
    return dxp_wrap(to_xml(doc_type, docs), dxp_sender(doc_type), receiver, KINDS[doc_type].root)


def to_json(doc_type: str, docs: list[tuple[dict[str, str], list[dict[str, str]]]]) -> bytes:
    kind = KINDS[doc_type]
    items = []
    for head, lines in docs:
        item: dict[str, object] = {kind.head: head}
        if kind.lines:
            item[kind.lines] = lines
        items.append(item)
    return orjson.dumps(items[0] if len(items) == 1 else items)


# --------------------------------------------------------------------------- publishing

class Publisher:
    """Publishes generated orders to the inbound topics with confluent-kafka.

    batch=1 sends one JSON document per record keyed by orderNo; batch>1 groups
    documents of one type into CEB messages of up to `batch` documents. The
    four document types of a group go out in a random order, and a share of
    documents is sent twice (exact duplicates).
    """

    def __init__(self, settings: "Settings", fmt: str = "json", batch: int = 1, seed: int = 7,
                 duplicate_rate: float = 0.0):
        from confluent_kafka import Producer

        from topics import registry

        self.fmt, self.batch, self.duplicate_rate = fmt, batch, duplicate_rate
        self.rng = random.Random(seed)
        conf = settings.librdkafka_config()
        # A closed idle connection (the demo stopping its broker) is not news.
        conf.update({"linger.ms": "5", "compression.type": "lz4", "batch.num.messages": "10000",
                     "log.connection.close": "false"})
        self.producer = Producer(conf)
        self.topics = {t: registry.topic_name(registry.sender_topic(t), settings) for t in KINDS}
        self.sent: dict[str, int] = {t: 0 for t in KINDS}

    def _produce(self, doc_type: str, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topics[doc_type], value, key.encode())
                self.producer.poll(0)
                return
            except BufferError:
                self.producer.poll(0.05)

    def send(self, orders: list[GeneratedOrder]) -> None:
        encode = {"xml": to_xml, "dxp": to_dxp}.get(self.fmt, to_json)
        if self.batch <= 1:
            for o in orders:
                types = list(o.docs)
                self.rng.shuffle(types)
                if self.duplicate_rate and self.rng.random() < self.duplicate_rate:
                    types.append(self.rng.choice(types))
                for t in types:
                    self._produce(t, o.order_no, encode(t, [o.docs[t]]))
                    self.sent[t] += 1
            return
        for i in range(0, len(orders), self.batch):
            chunk = orders[i:i + self.batch]
            types = list(KINDS)
            self.rng.shuffle(types)
            for t in types:
                docs = [o.docs[t] for o in chunk if t in o.docs]
                if self.duplicate_rate:
                    docs += [o.docs[t] for o in chunk
                             if t in o.docs and self.rng.random() < self.duplicate_rate / 4][:self.batch - len(docs)]
                if docs:
                    self._produce(t, chunk[0].order_no, encode(t, docs))
                    self.sent[t] += len(docs)

    def send_raw(self, doc_type: str, key: str, value: bytes) -> None:
        self._produce(doc_type, key, value)

    def flush(self) -> None:
        self.producer.flush(30)


def cancel_document(order: GeneratedOrder, invt_no: str, reason: str = "buyer cancelled") -> tuple[dict[str, str], list]:
    """A CEB623 InvtCancel for a generated order's list."""
    inv = order.docs["621"][0]
    head = {k: inv[k] for k in ("guid", "appType", "appTime", "appStatus", "customsCode", "orderNo", "ebpCode",
                                "ebpName", "ebcCode", "ebcName", "logisticsNo", "logisticsCode", "logisticsName",
                                "copNo")}
    head.update({"guid": str(uuid.uuid5(uuid.NAMESPACE_OID, "623" + order.order_no)).upper(), "invtNo": invt_no,
                 "buyerIdType": "1", "buyerIdNumber": inv["buyerIdNumber"], "buyerName": inv["buyerName"],
                 "buyerTelephone": inv["buyerTelephone"], "agentCode": inv["agentCode"],
                 "agentName": inv["agentName"], "reason": reason})
    return head, []


def refund_document(order: GeneratedOrder, invt_no: str, qty: dict[int, str] | None = None,
                    reason: str = "buyer returned the goods") -> tuple[dict[str, str], list[dict[str, str]]]:
    """A CEB625 return of a generated order's list (all lines, or `qty` per gnum)."""
    head, _ = cancel_document(order, invt_no, reason)
    head["guid"] = str(uuid.uuid5(uuid.NAMESPACE_OID, "625" + order.order_no + str(sorted((qty or {}).items()))))\
        .upper()
    lines = [{"gnum": line["gnum"], "gcode": line["gcode"], "gname": line["gname"],
              "qty": (qty or {}).get(int(line["gnum"]), line["qty"]), "unit": line["unit"]}
             for line in order.docs["621"][1] if qty is None or int(line["gnum"]) in qty]
    return head, lines
