"""Every topic the processor reads or writes: name, partitions, key, codec.

Nothing else in the project spells a topic name. Inbound topics are split per
sender class so a Kafka deployment can grant each class write access to its
own topic only.
"""
from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    name: str
    key: str
    codec: str
    description: str
    # Message types accepted on an inbound topic ("" for outbound topics).
    accepts: tuple[str, ...] = ()
    retention_ms: int = 7 * 24 * 3600 * 1000
    compacted: bool = False
    partitions: int | None = None  # None: the deployment's CLEARANCE_PARTITIONS


ORDER = TopicSpec("ceb.import.order", "orderNo or message guid", "ceb-xml|json",
                  "CEB311 electronic orders from platforms", ("311",))
PAYMENT = TopicSpec("ceb.import.payment", "orderNo or message guid", "ceb-xml|json",
                    "CEB411 payment records from payment companies", ("411",))
LOGISTICS = TopicSpec("ceb.import.logistics", "orderNo or message guid", "ceb-xml|json",
                      "CEB511 waybills from logistics companies", ("511",))
INVENTORY = TopicSpec("ceb.import.inventory", "orderNo or message guid", "ceb-xml|json",
                      "CEB621 inventory lists from declaring agents", ("621",))
CANCEL = TopicSpec("ceb.import.cancel", "orderNo or message guid", "ceb-xml|json",
                   "CEB623 cancellations of released lists, from declaring agents", ("623",))
REFUND = TopicSpec("ceb.import.refund", "orderNo or message guid", "ceb-xml|json",
                   "CEB625 returns, from declaring agents", ("625",))
DECISIONS = TopicSpec("clearance.decisions", "ebpCode:orderNo", "json",
                      "every clearance outcome, the audit trail")
RELEASE = TopicSpec("clearance.release", "logisticsNo", "json",
                    "released parcels for warehouse gates; no personal data")
RECEIPTS = TopicSpec("ceb.receipts", "sender code", "ceb-xml|json",
                     "CEB312/412/512/622 and CEB900 receipts back to senders")
DEADLETTER = TopicSpec("clearance.deadletter", "source topic:partition", "json",
                       "rejected input: original bytes (base64) and the reason",
                       retention_ms=30 * 24 * 3600 * 1000)

RULES = TopicSpec("clearance.rules", "ruleset", "json",
                  "the rule set in force (latest record wins); every worker reads all of it",
                  retention_ms=-1, compacted=True, partitions=1)
TAX = TopicSpec("clearance.tax", "invtNo", "json",
                "a tax record (CEB816 content) per released list; reversals for returns and cancels")
EXITS = TopicSpec("clearance.exit", "logisticsNo", "json", "parcels that left the zone through a gate")
GUARANTEES = TopicSpec("clearance.guarantee-events", "assureCode", "json",
                       "guarantee top-ups: held lists of that guarantor are released when they fit")
REVIEWS = TopicSpec("clearance.review-results", "orderNo", "json",
                    "officers' results for orders in manual review (300) or inspection (500)")

INBOUND: tuple[TopicSpec, ...] = (ORDER, PAYMENT, LOGISTICS, INVENTORY, CANCEL, REFUND)
OUTBOUND: tuple[TopicSpec, ...] = (DECISIONS, RELEASE, RECEIPTS, DEADLETTER, TAX, EXITS)
CONTROL: tuple[TopicSpec, ...] = (RULES, REVIEWS, GUARANTEES)
ALL: tuple[TopicSpec, ...] = INBOUND + OUTBOUND + CONTROL


def topic_name(spec: TopicSpec, settings: Settings) -> str:
    return settings.topic_prefix + spec.name


def inbound_by_name(settings: Settings) -> dict[str, TopicSpec]:
    return {topic_name(t, settings): t for t in INBOUND}


def sender_topic(message_type: str) -> TopicSpec:
    """Inbound topic on which a document type is published."""
    for spec in INBOUND:
        if message_type in spec.accepts:
            return spec
    raise KeyError(message_type)


def ensure_topics(settings: Settings) -> None:
    """Create every registered topic if missing (idempotent).

    Retention is set explicitly: some brokers (Tansu) do not report a default,
    and tools that read it fail without one.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(settings.librdkafka_config())
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = []
    for spec in ALL:
        name = topic_name(spec, settings)
        if name in existing:
            continue
        config = {"retention.ms": str(spec.retention_ms), "retention.bytes": "-1"}
        if spec.compacted:
            config["cleanup.policy"] = "compact"
        wanted.append(NewTopic(name, num_partitions=spec.partitions or settings.partitions,
                               replication_factor=settings.replication_factor, config=config))
    if not wanted:
        return
    for name, fut in admin.create_topics(wanted, operation_timeout=10).items():
        try:
            fut.result()
        except Exception as exc:  # already created by a concurrent worker is fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc) and "already exists" not in str(exc):
                raise
