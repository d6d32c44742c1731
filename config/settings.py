"""Process configuration, read once from environment variables.

Every address and credential comes from here. When KAFKA_BOOTSTRAP or
REDIS_URL is set, the embedded broker/Redis are not started: the values name
the production services.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping


# This processor's node id on the customs data exchange unless CLEARANCE_DXP_ID says otherwise.
DEFAULT_DXP_ID = "DXPCLEARANCE0001"
# Every Redis key of a deployment starts with its namespace and a colon.
DEFAULT_REDIS_NAMESPACE = "clr"
REDIS_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")

# A return may be applied for 30 days after release (processors/aftercare.py
# RETURN_WINDOW_MS, GACC Ann. 2020 No. 45) and must find the order's list:
# decided state is kept at least that long and a day, by default 35 days.
MIN_DECIDED_TTL_S = 31 * 24 * 3600
DEFAULT_DECIDED_TTL_S = 35 * 24 * 3600
# R9 (DOMAIN.md §2.1): a waybill number is unique per carrier for six months;
# an order holds its waybill number and payment serial that long after its
# decision (183 days), so a later order naming either is rejected.
DEFAULT_UNIQUE_TTL_S = 183 * 24 * 3600


# The key of the keyed hash of personal data when none is set: fine for
# in-process tests, refused by a worker (pii_key_problem), since anyone can
# read it here and hash a guessed ID number to look it up.
DEV_PII_KEY = "clearance-dev-key-change-me"
# BLAKE2b takes keys of up to 64 bytes; under 16 bytes (128 bits) a key is
# too short to be a secret.
PII_KEY_BYTES = (16, 64)
KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# What both Kafka clients (aiokafka for the worker's consumer, librdkafka for
# the producers and the gate) take with a user name and password.
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class SettingsError(ValueError):
    """A setting that would break a deployment: the process does not start."""


def _env(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "")
    return value if value != "" else default


def _secret(env: Mapping[str, str], name: str, default: str = "") -> str:
    """NAME, or the content of the file NAME_FILE: a secret mounted as a file
    (Kubernetes, Docker or systemd credentials) stays out of the process's
    environment, which /proc/PID/environ, `ps e` and crash reports show.
    The file's final line break is not part of the secret."""
    path = env.get(name + "_FILE", "")
    if not path:
        return _env(env, name, default)
    if env.get(name, ""):
        raise SettingsError(f"{name} and {name}_FILE are both set: set one")
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{name}_FILE {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not value:
        raise SettingsError(f"{name}_FILE {path} is empty")
    return value


def pii_key_problem(key: str) -> str:
    """Why a worker must not hash personal data with this key ("" if it may):
    the development key is public, and a key anyone can read turns the hashes
    of ID numbers back into the numbers by trying them all."""
    if key == DEV_PII_KEY:
        return ("CLEARANCE_PII_KEY is not set: personal data would be hashed with the development key, which "
                "anyone can read in the source. Set CLEARANCE_PII_KEY (or CLEARANCE_PII_KEY_FILE) to the zone's "
                "secret, the same on every worker (e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
    size = len(key.encode("utf-8"))
    if not PII_KEY_BYTES[0] <= size <= PII_KEY_BYTES[1]:
        return (f"CLEARANCE_PII_KEY must be {PII_KEY_BYTES[0]} to {PII_KEY_BYTES[1]} bytes (BLAKE2b's key), "
                f"not {size}")
    return ""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = ""
    # May hold Redis's password: no secret is in the settings' repr (test reports, a debug log).
    redis_url: str = field(default="", repr=False)
    # REDIS_URL names one node of a Redis Cluster: commands are routed by slot.
    redis_cluster: bool = False
    # More cluster nodes to ask for the slot map ("host:port,host:port"): a
    # process that starts while REDIS_URL's node is down still finds the cluster.
    redis_cluster_nodes: str = ""
    # Redis Sentinel ("host:port,host:port"): the primary of `redis_sentinel_master`
    # is asked of them, and asked again after a failover. REDIS_URL then gives
    # the database, credentials and TLS only.
    redis_sentinels: str = ""
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_password: str = field(default="", repr=False)
    # Replicas that must hold a batch's Redis writes before it counts as done
    # (WAIT; 0: Redis's asynchronous replication alone), and how long to wait.
    redis_wait_replicas: int = 0
    redis_wait_ms: int = 1000
    # librdkafka/aiokafka security options, passed through unchanged.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    # A client certificate and its key (PEM) for brokers that authenticate
    # clients by TLS certificate (mutual TLS); the key's password, if it has one.
    kafka_ssl_certfile: str = ""
    kafka_ssl_keyfile: str = ""
    kafka_ssl_key_password: str = field(default="", repr=False)
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
    pii_key: str = field(default=DEV_PII_KEY, repr=False)
    # Slot buckets of the Redis keys (see streams/state.py); same on every worker.
    redis_buckets: int = 16
    # The first part of every Redis key ("clr:o:..."): deployments that share
    # one Redis (two zones, or staging beside production, on one managed
    # Redis Cluster, which has no SELECT) each need their own, or one's
    # timeout sweep decides the other's orders and they share buyers' quotas.
    redis_namespace: str = DEFAULT_REDIS_NAMESPACE
    # When a worker finds that Redis lost data (ClearanceRedisKeyspaceLost):
    # "continue" deciding against what is left (pending matches and buyers'
    # quotas gone), or "halt" every worker of the namespace, holding every
    # document unacknowledged, until an operator runs `clearance resume` (or
    # restores a backup, which holds no halt).
    redis_loss: str = "continue"
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
    # How long a gate's connection to the API waits for its next request
    # (HTTP/1.1 keep-alive); 0: one request per connection.
    gate_keepalive_s: float = 5.0
    # TLS on the gate API itself (no proxy): its certificate and key, and the
    # CA whose client certificates identify gates (the certificate's common
    # name is the gate's id, acting as that gate's own token).
    gate_tls_certfile: str = ""
    gate_tls_keyfile: str = ""
    gate_tls_key_password: str = field(default="", repr=False)
    gate_tls_client_ca: str = ""
    gate_tls_crl: str = ""
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
        return self.redis_url == "" and not self.redis_sentinels

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
        if self.kafka_ssl_certfile:
            conf["ssl.certificate.location"] = self.kafka_ssl_certfile
            conf["ssl.key.location"] = self.kafka_ssl_keyfile or self.kafka_ssl_certfile
            if self.kafka_ssl_key_password:
                conf["ssl.key.password"] = self.kafka_ssl_key_password
        return conf


def _whole(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {value!r}") from None


def _number(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):
        raise SettingsError(f"{name} must be a number, not {value!r}")
    return number


def _int(env: Mapping[str, str], name: str, default: str) -> int:
    return _whole(name, _env(env, name, default))


def _float(env: Mapping[str, str], name: str, default: str) -> float:
    return _number(name, _env(env, name, default))


def _decided_ttl(value: str) -> int:
    seconds = _whole("CLEARANCE_DECIDED_TTL_S", value)
    if seconds < MIN_DECIDED_TTL_S:
        raise SettingsError(f"CLEARANCE_DECIDED_TTL_S must be at least {MIN_DECIDED_TTL_S} (31 days): a return may "
                            f"come 30 days after release and needs the order's list; {seconds} is shorter")
    return seconds


def _positive(name: str, value: str) -> int:
    seconds = _whole(name, value)
    if seconds <= 0:
        raise SettingsError(f"{name} must be a positive number of seconds, not {seconds}")
    return seconds


def _non_negative(name: str, value: str) -> float:
    seconds = _number(name, value)
    if seconds < 0:
        raise SettingsError(f"{name} must be a number of seconds, 0 or more, not {value}")
    return seconds


def _positive_int(name: str, value: str) -> int:
    n = _whole(name, value)
    if n < 1:
        raise SettingsError(f"{name} must be a whole number, 1 or more, not {value!r}")
    return n


def _unique_kinds(value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip() and k.strip() != "none")
    unknown = set(kinds) - {"waybill", "payment"}
    if unknown:
        raise SettingsError(f"CLEARANCE_UNIQUE_KINDS lists waybill and/or payment (or none), not {sorted(unknown)}")
    return kinds


def _signatures(value: str) -> str:
    if value not in ("verify", "off"):
        raise SettingsError(f"CLEARANCE_SIGNATURES is verify or off, not {value!r}")
    return value


def _redis_loss(value: str) -> str:
    if value not in ("continue", "halt"):
        raise SettingsError(f"CLEARANCE_REDIS_LOSS is continue or halt, not {value!r}")
    return value


def _dxp_id(value: str) -> str:
    if not 1 <= len(value) <= 16 or not value.isascii() or not value.isalnum():
        raise SettingsError(f"CLEARANCE_DXP_ID must be 1-16 letters and digits (a DXP node id), not {value!r}")
    return value


def _redis_namespace(value: str) -> str:
    # No ':' (key parsers split on it), no braces (a hash tag would pin every
    # key to one cluster slot), no glob characters (operators' scans match on it).
    if not REDIS_NAMESPACE.fullmatch(value):
        raise SettingsError("CLEARANCE_REDIS_NAMESPACE must be 1-32 letters, digits, '.', '_' or '-', "
                            f"starting with a letter or digit, not {value!r}")
    return value


def host_ports(nodes: str, source: str) -> list[tuple[str, int]]:
    """A list of addresses, "host:port,[::1]:port", as (host, port)s."""
    out = []
    for item in filter(None, (x.strip() for x in nodes.split(","))):
        host, sep, port = item.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"{source}: expected host:port, got {item!r}")
        out.append((host.strip("[]"), int(port)))
    return out


def _redis_sentinel(e: Mapping[str, str]) -> dict[str, str]:
    sentinels = _env(e, "REDIS_SENTINELS", "")
    master = _env(e, "REDIS_SENTINEL_MASTER", "mymaster")
    if sentinels:
        try:
            host_ports(sentinels, "REDIS_SENTINELS")
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        if _env(e, "REDIS_CLUSTER", "").lower() in ("1", "true", "yes"):
            raise SettingsError("REDIS_SENTINELS and REDIS_CLUSTER are both set: a Redis Cluster fails over by "
                                "itself, Sentinel watches one primary; set one")
    return {"redis_sentinels": sentinels, "redis_sentinel_master": master,
            "redis_sentinel_password": _secret(e, "REDIS_SENTINEL_PASSWORD")}


def _readable(name: str, path: str) -> str:
    if path and not os.access(path, os.R_OK):
        raise SettingsError(f"{name} {path}: " + ("cannot be read" if os.path.exists(path) else "no such file"))
    return path


def _kafka_security(e: Mapping[str, str]) -> dict[str, str]:
    """The Kafka security settings, checked here so that a misspelt protocol,
    an unsupported mechanism or a missing certificate stops the start with a
    message instead of a client retrying in its log."""
    protocol = _env(e, "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in KAFKA_PROTOCOLS:
        raise SettingsError(f"KAFKA_SECURITY_PROTOCOL is one of {', '.join(KAFKA_PROTOCOLS)}, not {protocol!r}")
    out = {"kafka_security_protocol": protocol,
           "kafka_sasl_mechanism": _env(e, "KAFKA_SASL_MECHANISM", "").upper(),
           "kafka_sasl_username": _env(e, "KAFKA_SASL_USERNAME", ""),
           "kafka_sasl_password": _secret(e, "KAFKA_SASL_PASSWORD"),
           "kafka_ssl_cafile": _readable("KAFKA_SSL_CAFILE", _env(e, "KAFKA_SSL_CAFILE", "")),
           "kafka_ssl_certfile": _readable("KAFKA_SSL_CERTFILE", _env(e, "KAFKA_SSL_CERTFILE", "")),
           "kafka_ssl_keyfile": _readable("KAFKA_SSL_KEYFILE", _env(e, "KAFKA_SSL_KEYFILE", "")),
           "kafka_ssl_key_password": _secret(e, "KAFKA_SSL_KEY_PASSWORD")}
    if protocol.startswith("SASL"):
        out["kafka_sasl_mechanism"] = out["kafka_sasl_mechanism"] or "PLAIN"
        if out["kafka_sasl_mechanism"] not in KAFKA_SASL_MECHANISMS:
            raise SettingsError(f"KAFKA_SASL_MECHANISM is one of {', '.join(KAFKA_SASL_MECHANISMS)}, not "
                                f"{out['kafka_sasl_mechanism']!r}")
        if not out["kafka_sasl_username"] or not out["kafka_sasl_password"]:
            raise SettingsError(f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_USERNAME and "
                                "KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE)")
    else:
        out["kafka_sasl_mechanism"] = ""  # without SASL a mechanism would only confuse librdkafka
    tls = [n for n in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE") if e.get(n)]
    if tls and "SSL" not in protocol:
        raise SettingsError(f"{tls[0]} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
                            "(SSL or SASL_SSL)")
    if (out["kafka_ssl_keyfile"] or out["kafka_ssl_key_password"]) and not out["kafka_ssl_certfile"]:
        raise SettingsError("KAFKA_SSL_KEYFILE and KAFKA_SSL_KEY_PASSWORD go with KAFKA_SSL_CERTFILE (the client "
                            "certificate): set it")
    if out["kafka_ssl_certfile"]:
        _client_certificate(out["kafka_ssl_certfile"], out["kafka_ssl_keyfile"], out["kafka_ssl_key_password"])
    return out


def _gate_tls(e: Mapping[str, str]) -> dict[str, str]:
    out = {"gate_tls_certfile": _readable("CLEARANCE_GATE_TLS_CERTFILE", _env(e, "CLEARANCE_GATE_TLS_CERTFILE", "")),
           "gate_tls_keyfile": _readable("CLEARANCE_GATE_TLS_KEYFILE", _env(e, "CLEARANCE_GATE_TLS_KEYFILE", "")),
           "gate_tls_key_password": _secret(e, "CLEARANCE_GATE_TLS_KEY_PASSWORD"),
           "gate_tls_client_ca": _readable("CLEARANCE_GATE_TLS_CLIENT_CA", _env(e, "CLEARANCE_GATE_TLS_CLIENT_CA", "")),
           "gate_tls_crl": _readable("CLEARANCE_GATE_TLS_CRL", _env(e, "CLEARANCE_GATE_TLS_CRL", ""))}
    if out["gate_tls_crl"] and not out["gate_tls_client_ca"]:
        raise SettingsError("CLEARANCE_GATE_TLS_CRL revokes gate certificates: it goes with CLEARANCE_GATE_TLS_CLIENT_CA")
    if not out["gate_tls_certfile"] and any(out.values()):
        raise SettingsError("CLEARANCE_GATE_TLS_KEYFILE, _KEY_PASSWORD and _CLIENT_CA go with "
                            "CLEARANCE_GATE_TLS_CERTFILE (the gate API's certificate): set it")
    if out["gate_tls_certfile"]:
        _client_certificate(out["gate_tls_certfile"], out["gate_tls_keyfile"], out["gate_tls_key_password"],
                            "CLEARANCE_GATE_TLS")
    return out


def _client_certificate(certfile: str, keyfile: str, password: str, prefix: str = "KAFKA_SSL") -> None:
    """Whether a certificate and its key load as the Kafka clients (or the
    gate API) will load them: a wrong password or a key of another
    certificate is said at start. The password is "" when none is set, never None, with which
    OpenSSL would ask for one on the terminal."""
    import ssl

    try:
        ssl.create_default_context().load_cert_chain(certfile, keyfile or None, password)
    except ssl.SSLError as exc:
        raise SettingsError(f"{prefix}_CERTFILE {certfile}, {prefix}_KEYFILE {keyfile or certfile}: "
                            f"{certificate_load_problem(exc, prefix)}") from None


def certificate_load_problem(exc: Exception, prefix: str) -> str:
    """What OpenSSL's refusal to load a certificate and its key means, in words."""
    if "MISMATCH" in str(exc):
        return "the key does not belong to the certificate"
    return f"no certificate or no key can be read from them: a wrong or missing {prefix}_KEY_PASSWORD, or not PEM"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    e = os.environ if env is None else env
    return Settings(
        kafka_bootstrap=_env(e, "KAFKA_BOOTSTRAP", ""),
        redis_url=_secret(e, "REDIS_URL"),
        redis_cluster=_env(e, "REDIS_CLUSTER", "").lower() in ("1", "true", "yes"),
        redis_cluster_nodes=_env(e, "REDIS_CLUSTER_NODES", ""),
        **_redis_sentinel(e),
        redis_wait_replicas=_int(e, "CLEARANCE_REDIS_WAIT_REPLICAS", "0"),
        redis_wait_ms=_int(e, "CLEARANCE_REDIS_WAIT_MS", "1000"),
        **_kafka_security(e),
        topic_prefix=_env(e, "CLEARANCE_TOPIC_PREFIX", ""),
        partitions=_int(e, "CLEARANCE_PARTITIONS", "4"),
        replication_factor=_int(e, "CLEARANCE_REPLICATION_FACTOR", "1"),
        consumer_group=_env(e, "CLEARANCE_GROUP", "clearance-worker"),
        match_timeout_s=_float(e, "CLEARANCE_MATCH_TIMEOUT_S", "1800"),
        decided_ttl_s=_decided_ttl(_env(e, "CLEARANCE_DECIDED_TTL_S", str(DEFAULT_DECIDED_TTL_S))),
        unique_ttl_s=_positive("CLEARANCE_UNIQUE_TTL_S", _env(e, "CLEARANCE_UNIQUE_TTL_S", str(DEFAULT_UNIQUE_TTL_S))),
        unique_kinds=_unique_kinds(_env(e, "CLEARANCE_UNIQUE_KINDS", "waybill,payment")),
        signatures=_signatures(_env(e, "CLEARANCE_SIGNATURES", "verify")),
        dxp_id=_dxp_id(_env(e, "CLEARANCE_DXP_ID", DEFAULT_DXP_ID)),
        pii_key=_secret(e, "CLEARANCE_PII_KEY", DEV_PII_KEY),
        redis_buckets=_int(e, "CLEARANCE_REDIS_BUCKETS", "16"),
        redis_namespace=_redis_namespace(_env(e, "CLEARANCE_REDIS_NAMESPACE", DEFAULT_REDIS_NAMESPACE)),
        redis_loss=_redis_loss(_env(e, "CLEARANCE_REDIS_LOSS", "continue")),
        rules=_env(e, "CLEARANCE_RULES", ""),
        batch_max=_int(e, "CLEARANCE_BATCH_MAX", "500"),
        batch_bytes=_int(e, "CLEARANCE_BATCH_BYTES", str(4 * 1024 * 1024)),
        batch_within_s=_float(e, "CLEARANCE_BATCH_WITHIN_S", "0.005"),
        inflight_batches=_int(e, "CLEARANCE_INFLIGHT_BATCHES", "1"),
        stream_buffer=_int(e, "CLEARANCE_STREAM_BUFFER", "500"),
        max_poll_records=_int(e, "CLEARANCE_MAX_POLL_RECORDS", "1000"),
        fetch_max_wait_ms=_int(e, "CLEARANCE_FETCH_MAX_WAIT_MS", "20"),
        produce_timeout_ms=_int(e, "CLEARANCE_PRODUCE_TIMEOUT_MS", "30000"),
        gate_exit_resend_s=_non_negative("CLEARANCE_GATE_EXIT_RESEND_S",
                                         _env(e, "CLEARANCE_GATE_EXIT_RESEND_S", "30")),
        gate_host=_env(e, "CLEARANCE_GATE_HOST", "127.0.0.1"),
        gate_port=_int(e, "CLEARANCE_GATE_PORT", "0"),
        gate_group=_env(e, "CLEARANCE_GATE_GROUP", "clearance-gate"),
        **_gate_tls(e),
        gate_keepalive_s=_non_negative("CLEARANCE_GATE_KEEPALIVE_S", _env(e, "CLEARANCE_GATE_KEEPALIVE_S", "5")),
        gate_max_connections=_positive_int("CLEARANCE_GATE_MAX_CONNECTIONS",
                                           _env(e, "CLEARANCE_GATE_MAX_CONNECTIONS", "64")),
        web_host=_env(e, "CLEARANCE_WEB_HOST", "127.0.0.1"),
        web_port=_int(e, "CLEARANCE_WEB_PORT", "6066"),
        session_timeout_s=_float(e, "CLEARANCE_SESSION_TIMEOUT_S", "6"),
        state_dir=_env(e, "CLEARANCE_STATE_DIR", os.path.join(os.getcwd(), ".clearance")),
    )
