"""Process configuration, read once from environment variables.

Every address and credential comes from here. When KAFKA_BOOTSTRAP or
REDIS_URL is set, the embedded broker/Redis are not started: the values name
the production services.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Mapping


# This processor's node id on the customs data exchange unless CLEARANCE_DXP_ID says otherwise.
DEFAULT_DXP_ID = "DXPCLEARANCE0001"

# A return may be applied for 30 days after release (processors/aftercare.py
# RETURN_WINDOW_MS, GACC Ann. 2020 No. 45) and must find the order's list:
# decided state is kept at least that long and a day, by default 35 days.
MIN_DECIDED_TTL_S = 31 * 24 * 3600
DEFAULT_DECIDED_TTL_S = 35 * 24 * 3600
# R9 (DOMAIN.md §2.1): a waybill number is unique per carrier for six months;
# an order holds its waybill number and payment serial that long after its
# decision (183 days), so a later order naming either is rejected.
DEFAULT_UNIQUE_TTL_S = 183 * 24 * 3600


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "")
    return value if value != "" else default


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = ""
    redis_url: str = ""
    # REDIS_URL names one node of a Redis Cluster: commands are routed by slot.
    redis_cluster: bool = False
    # More cluster nodes to ask for the slot map ("host:port,host:port"): a
    # process that starts while REDIS_URL's node is down still finds the cluster.
    redis_cluster_nodes: str = ""
    # Replicas that must hold a batch's Redis writes before it counts as done
    # (WAIT; 0: Redis's asynchronous replication alone), and how long to wait.
    redis_wait_replicas: int = 0
    redis_wait_ms: int = 1000
    # librdkafka/aiokafka security options, passed through unchanged.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    topic_prefix: str = ""
    partitions: int = 4
    replication_factor: int = 1
    consumer_group: str = "clearance-worker"
    # An incomplete match is decided as a timeout after this many seconds.
    match_timeout_s: float = 1800.0
    # Retention in Redis of a decided order (its decision, list and digests),
    # its trace indexes and its parcel's gate state after exit, cancel or
    # return: late duplicates are recognised, and a return (CEB625) finds the
    # list it returns goods of, for the whole 30-day return window.
    decided_ttl_s: int = DEFAULT_DECIDED_TTL_S
    # How long an order holds its waybill number (logisticsCode, logisticsNo)
    # and payment serial (payCode, payTransactionId) against other orders
    # (R9); a reject or a cancel gives them back at once.
    unique_ttl_s: int = DEFAULT_UNIQUE_TTL_S
    # Which numbers are held that way: "waybill", "payment" (both by default).
    # A payment company that reports one serial for the orders a cart was
    # split into would have every order after the first rejected: leave
    # "payment" out for a zone where that is the practice.
    unique_kinds: tuple[str, ...] = ("waybill", "payment")
    # XML signatures (ds:Signature): "verify" refuses a message whose signature
    # does not verify (tampered, or not signed by the certificate it carries)
    # and records the signing certificate for R13; "off" only checks, by the
    # XSD, that 621/623/625 carry one (for senders still testing with the
    # official samples, whose signatures are a copied placeholder).
    signatures: str = "verify"
    # This processor's node id on the customs data exchange (DXP): the SenderId
    # of receipts to senders that wrap their messages in DxpMsg (1-16 characters).
    dxp_id: str = DEFAULT_DXP_ID
    # Keyed hash for personal data (buyer/payer ID, names, phones, addresses).
    pii_key: str = "clearance-dev-key-change-me"
    # Slot buckets of the Redis keys (see streams/state.py); same on every worker.
    redis_buckets: int = 16
    # Rule set at start: a YAML/JSON file, or "spine" (comparison rules and the
    # two limits only: the match-only configuration). The rules topic overrides it.
    rules: str = ""
    batch_max: int = 500
    # A batch is also cut at this many bytes of record values: 500 records of
    # 100-document messages would be 50,000 documents decoded at once.
    batch_bytes: int = 4 * 1024 * 1024
    batch_within_s: float = 0.005
    # Inbound batches in flight at once: with 2, the next one is decoded and
    # matched while the previous waits on Redis and the broker. 1 (one at a
    # time) stays the default: 2 measured +4 % for 100-document messages on 16
    # cores, within the run-to-run spread, and fewer per-document records/s
    # on 2 cores (smaller batches); docs/operations.md "In-flight batches".
    inflight_batches: int = 1
    # Bounded memory under a backlog: events buffered per stream, records per fetch.
    stream_buffer: int = 500
    max_poll_records: int = 1000
    # How long a fetch may wait at the broker (see docs/operations.md "Fetch wait").
    fetch_max_wait_ms: int = 20
    # librdkafka delivery timeout of the output producer; failed deliveries are re-sent.
    produce_timeout_ms: int = 30000
    # The gate sends again an exit event the broker has not acknowledged this
    # long after the exit (streams/gate.py, its outbox in Redis).
    gate_exit_resend_s: float = 30.0
    # The gate service's HTTP API (scans, exits, /metrics, /health); port 0: none.
    gate_host: str = "127.0.0.1"
    gate_port: int = 0
    # Connections the gate API serves at once; one more is answered 503 at once.
    gate_max_connections: int = 64
    # The gate services' consumer group on the release topic: one per zone
    # (topic prefix) sharing a Kafka cluster, or one zone's gates rebalance
    # with every other zone's.
    gate_group: str = "clearance-gate"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    session_timeout_s: float = 6.0
    state_dir: str = field(default_factory=lambda: os.path.join(os.getcwd(), ".clearance"))

    @property
    def embedded_kafka(self) -> bool:
        return self.kafka_bootstrap == ""

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url == ""

    def librdkafka_config(self) -> dict[str, str]:
        """Connection options in librdkafka (confluent-kafka) spelling."""
        conf = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username
            conf["sasl.password"] = self.kafka_sasl_password
        if self.kafka_ssl_cafile:
            conf["ssl.ca.location"] = self.kafka_ssl_cafile
        return conf


def _decided_ttl(value: str) -> int:
    seconds = int(value)
    if seconds < MIN_DECIDED_TTL_S:
        raise ValueError(f"CLEARANCE_DECIDED_TTL_S must be at least {MIN_DECIDED_TTL_S} (31 days): a return may "
                         f"come 30 days after release and needs the order's list; {seconds} is shorter")
    return seconds


def _positive(name: str, value: str) -> int:
    seconds = int(value)
    if seconds <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {seconds}")
    return seconds


def _non_negative(name: str, value: str) -> float:
    seconds = float(value)
    if not seconds >= 0 or seconds == float("inf"):  # NaN fails the first test
        raise ValueError(f"{name} must be a number of seconds, 0 or more, not {value}")
    return seconds


def _positive_int(name: str, value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name} must be a whole number, 1 or more, not {value!r}")
    return n


def _unique_kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip() and k.strip() != "none")
    unknown = set(kinds) - {"waybill", "payment"}
    if unknown:
        raise ValueError(f"CLEARANCE_UNIQUE_KINDS lists waybill and/or payment (or none), not {sorted(unknown)}")
    return kinds


def _signatures(value: str) -> str:
    if value not in ("verify", "off"):
        raise ValueError(f"CLEARANCE_SIGNATURES is verify or off, not {value!r}")
    return value


def _dxp_id(value: str) -> str:
    if not 1 <= len(value) <= 16 or not value.isascii() or not value.isalnum():
        raise ValueError(f"CLEARANCE_DXP_ID must be 1-16 letters and digits (a DXP node id), not {value!r}")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    e = os.environ if env is None else env
    return Settings(
        kafka_bootstrap=_env(e, "KAFKA_BOOTSTRAP", ""),
        redis_url=_env(e, "REDIS_URL", ""),
        redis_cluster=_env(e, "REDIS_CLUSTER", "").lower() in ("1", "true", "yes"),
        redis_cluster_nodes=_env(e, "REDIS_CLUSTER_NODES", ""),
        redis_wait_replicas=int(_env(e, "CLEARANCE_REDIS_WAIT_REPLICAS", "0")),
        redis_wait_ms=int(_env(e, "CLEARANCE_REDIS_WAIT_MS", "1000")),
        kafka_security_protocol=_env(e, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        kafka_sasl_mechanism=_env(e, "KAFKA_SASL_MECHANISM", ""),
        kafka_sasl_username=_env(e, "KAFKA_SASL_USERNAME", ""),
        kafka_sasl_password=_env(e, "KAFKA_SASL_PASSWORD", ""),
        kafka_ssl_cafile=_env(e, "KAFKA_SSL_CAFILE", ""),
        topic_prefix=_env(e, "CLEARANCE_TOPIC_PREFIX", ""),
        partitions=int(_env(e, "CLEARANCE_PARTITIONS", "4")),
        replication_factor=int(_env(e, "CLEARANCE_REPLICATION_FACTOR", "1")),
        consumer_group=_env(e, "CLEARANCE_GROUP", "clearance-worker"),
        match_timeout_s=float(_env(e, "CLEARANCE_MATCH_TIMEOUT_S", "1800")),
        decided_ttl_s=_decided_ttl(_env(e, "CLEARANCE_DECIDED_TTL_S", str(DEFAULT_DECIDED_TTL_S))),
        unique_ttl_s=_positive("CLEARANCE_UNIQUE_TTL_S", _env(e, "CLEARANCE_UNIQUE_TTL_S", str(DEFAULT_UNIQUE_TTL_S))),
        unique_kinds=_unique_kinds(_env(e, "CLEARANCE_UNIQUE_KINDS", "waybill,payment")),
        signatures=_signatures(_env(e, "CLEARANCE_SIGNATURES", "verify")),
        dxp_id=_dxp_id(_env(e, "CLEARANCE_DXP_ID", DEFAULT_DXP_ID)),
        pii_key=_env(e, "CLEARANCE_PII_KEY", "clearance-dev-key-change-me"),
        redis_buckets=int(_env(e, "CLEARANCE_REDIS_BUCKETS", "16")),
        rules=_env(e, "CLEARANCE_RULES", ""),
        batch_max=int(_env(e, "CLEARANCE_BATCH_MAX", "500")),
        batch_bytes=int(_env(e, "CLEARANCE_BATCH_BYTES", str(4 * 1024 * 1024))),
        batch_within_s=float(_env(e, "CLEARANCE_BATCH_WITHIN_S", "0.005")),
        inflight_batches=int(_env(e, "CLEARANCE_INFLIGHT_BATCHES", "1")),
        stream_buffer=int(_env(e, "CLEARANCE_STREAM_BUFFER", "500")),
        max_poll_records=int(_env(e, "CLEARANCE_MAX_POLL_RECORDS", "1000")),
        fetch_max_wait_ms=int(_env(e, "CLEARANCE_FETCH_MAX_WAIT_MS", "20")),
        produce_timeout_ms=int(_env(e, "CLEARANCE_PRODUCE_TIMEOUT_MS", "30000")),
        gate_exit_resend_s=_non_negative("CLEARANCE_GATE_EXIT_RESEND_S",
                                         _env(e, "CLEARANCE_GATE_EXIT_RESEND_S", "30")),
        gate_host=_env(e, "CLEARANCE_GATE_HOST", "127.0.0.1"),
        gate_port=int(_env(e, "CLEARANCE_GATE_PORT", "0")),
        gate_group=_env(e, "CLEARANCE_GATE_GROUP", "clearance-gate"),
        gate_max_connections=_positive_int("CLEARANCE_GATE_MAX_CONNECTIONS",
                                           _env(e, "CLEARANCE_GATE_MAX_CONNECTIONS", "64")),
        web_host=_env(e, "CLEARANCE_WEB_HOST", "127.0.0.1"),
        web_port=int(_env(e, "CLEARANCE_WEB_PORT", "6066")),
        session_timeout_s=float(_env(e, "CLEARANCE_SESSION_TIMEOUT_S", "6")),
        state_dir=_env(e, "CLEARANCE_STATE_DIR", os.path.join(os.getcwd(), ".clearance")),
    )
