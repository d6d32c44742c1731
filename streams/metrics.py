"""Prometheus metrics: conventional names, base units, no personal labels.

Label values are bounded sets (document types, statuses, reason codes,
topic/partition), never order numbers or buyer data.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RECORDS = Counter("clearance_records_consumed_total", "Inbound Kafka records consumed", ["topic"])
DOCUMENTS = Counter("clearance_documents_consumed_total", "CEB documents consumed", ["type", "format"])
DUPLICATES = Counter("clearance_duplicate_documents_total",
                     "Documents seen before: identical, conflicting, or after the decision", ["kind"])
AMENDMENTS = Counter("clearance_document_amendments_total",
                     "Documents changed (appType 2) or deleted (appType 3) before their order's decision",
                     ["type", "kind"])
DECISIONS = Counter("clearance_decisions_total", "Clearance decisions emitted", ["status", "outcome", "lane"])
RULE_HITS = Counter("clearance_rule_hits_total", "Rules that fired in emitted decisions", ["rule"])
TIMEOUTS = Counter("clearance_match_timeouts_total", "Matches decided as timeouts, by missing document type",
                   ["missing"])
UNCLAIMED_WAYBILLS = Counter("clearance_waybills_unclaimed_total",
                             "Waybills timed out with no list naming their logisticsCode/logisticsNo "
                             "(a list naming another waybill number, or no list sent)")
PENDING = Gauge("clearance_pending_matches",
                "Orders waiting for their remaining documents (and waybills no list has named yet)")
REDIS_DEPLOYMENTS = Gauge("clearance_redis_deployments",
                          "Deployments (topic prefixes) whose workers used this Redis namespace in the last "
                          "minute: more than 1 means their orders and timeouts mix (CLEARANCE_REDIS_NAMESPACE)")
KEYSPACE_LOST = Counter("clearance_redis_keyspace_lost_total",
                        "Times this worker found Redis without data it had held (the namespace's markers gone): "
                        "pending matches, buyers' annual quotas and counters lost with it")
HALTED = Gauge("clearance_worker_halted",
               "1 while the worker decides nothing because Redis lost data (CLEARANCE_REDIS_LOSS=halt) "
               "until `clearance resume`")
TIMEOUT_HOLD = Gauge("clearance_timeout_watermark_delay_seconds",
                     "How far the group's watermark (the match-timeout clock) trails the wall clock: "
                     "timeouts held back while some inbound partition lags")
REDIS_USED_MEMORY = Gauge("clearance_redis_used_memory_bytes",
                          "Memory Redis reports in use (INFO memory used_memory), read by each worker")
GATE_EXITS_OWED = Gauge("clearance_gate_exit_events_owed",
                        "Exits recorded at the gates whose event the broker has not acknowledged yet (the gates' "
                        "outbox in Redis), read by each worker")
REDIS_MAX_MEMORY = Gauge("clearance_redis_maxmemory_bytes",
                         "Redis maxmemory (0: no limit set, Redis grows until the host refuses)")
OLDEST_PENDING = Gauge("clearance_pending_oldest_age_seconds", "Age of the oldest incomplete match")
LATENCY = Histogram("clearance_decision_latency_seconds",
                    "Completing document's record timestamp to decision emitted", buckets=LATENCY_BUCKETS)
BATCH_SECONDS = Histogram("clearance_batch_processing_seconds", "Time to process one consumed batch",
                          buckets=LATENCY_BUCKETS)
STAGE_SECONDS = Histogram("clearance_stage_duration_seconds",
                          "Time per batch in each pipeline stage (decode, match, decide, emit)", ["stage"],
                          buckets=LATENCY_BUCKETS)
BATCH_RECORDS = Histogram("clearance_batch_records", "Records per consumed batch",
                          buckets=(1, 5, 10, 50, 100, 500, 1000, 2000, 5000))
ERRORS = Counter("clearance_errors_total", "Rejected input and processing errors, by reason", ["reason"])
DEADLETTERS = Counter("clearance_deadletter_records_total", "Records written to the dead-letter topic",
                      ["reason"])
RECEIPTS = Counter("clearance_receipts_total", "Receipts sent to senders", ["type", "status"])
LAG = Gauge("clearance_consumer_lag_records", "Log-end offset minus committed offset",
            ["topic", "partition"])
LAG_SECONDS = Gauge("clearance_consumer_lag_seconds",
                    "Age of the newest processed record while the partition lags (0 when caught up)",
                    ["topic", "partition"])
REBALANCES = Counter("clearance_rebalances_total", "Consumer-group rebalances this worker took part in")
DEPENDENCY_ERRORS = Counter("clearance_dependency_errors_total",
                            "Failed batches by the dependency that failed (redis, broker, other)", ["dependency"])
# The deployment's topic prefix and Redis namespace: which zone a series is of,
# when several share a Prometheus (and whether two were pointed at one namespace).
WORKER_INFO = Gauge("clearance_worker_info", "Worker identity (value 1)",
                    ["version", "group", "topic_prefix", "redis_namespace"])
RETRIES = Counter("clearance_batch_retries_total", "Batches retried after a Redis or broker failure",
                  ["cause"])
TOKEN_FILES_VALID = Gauge("clearance_token_files_valid",
                          "Whether the worker's token files (CLEARANCE_HTTP_TOKEN_FILE, CLEARANCE_METRICS_TOKEN_FILE) "
                          "as they are now are in force: 0 when the last change of one was refused (malformed, "
                          "unreadable, empty) and the tokens before it stay in force; 1 without a file")
_TLS_EXPIRY_HELP = ("When a TLS certificate this process shows expires (Unix time): certificate=\"kafka_client\" "
                    "(KAFKA_SSL_CERTFILE, read at start: a renewed one needs a restart), \"gate_api\" "
                    "(CLEARANCE_GATE_TLS_CERTFILE, read again when renewed)")
TLS_CERT_EXPIRY = Gauge("clearance_tls_certificate_expiry_timestamp_seconds", _TLS_EXPIRY_HELP, ["certificate"])
RULESET_INFO = Gauge("clearance_ruleset_info", "Rule set in force (value 1)", ["version"])
RULESET_LOADS = Counter("clearance_ruleset_loads_total", "Rule sets received, by result", ["result"])
REVIEWS = Counter("clearance_reviews_total", "Officer review results processed", ["result"])
GUARANTEE_HELD = Counter("clearance_guarantee_held_total",
                         "Lists held (599) because their guarantor's remaining guarantee did not cover their tax; "
                         "only a guarantor with an account holds lists, so the label set is the accounts'",
                         ["assure_code"])
SIGNER_EXPIRY = Gauge("clearance_signing_certificate_expiry_timestamp_seconds",
                      "When the certificate an enterprise last signed with expires (Unix time); only "
                      "certificates the enterprise register lists for that copCode, so the label set is the "
                      "register's", ["cop_code"])

# The reference gate service (`clearance gate`) is its own process: its metrics
# live in their own registry, so its /metrics shows none of the worker's series
# at zero (a gate's clearance_pending_matches 0 would pull max() down).
GATE_REGISTRY = CollectorRegistry(auto_describe=True)
GATE_INFO = Gauge("clearance_gate_info", "Gate service identity (value 1)",
                  ["version", "group", "topic_prefix", "redis_namespace"],
                  registry=GATE_REGISTRY)
GATE_REQUESTS = Counter("clearance_gate_requests_total",
                        "Gate API requests answered, by route and HTTP status (route unread: a connection answered "
                        "503 busy before its request was read)", ["route", "code"], registry=GATE_REGISTRY)
GATE_REQUEST_SECONDS = Histogram("clearance_gate_request_duration_seconds", "Gate API time to answer, by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=GATE_REGISTRY)
GATE_SCANS = Counter("clearance_gate_scans_total", "Parcels scanned at the gates, by answer (release, hold, unknown)",
                     ["answer"], registry=GATE_REGISTRY)
GATE_EXITS = Counter("clearance_gate_exits_total",
                     "Exit requests per parcel, by result (exited, already_exited, refused)", ["result"],
                     registry=GATE_REGISTRY)
GATE_EXIT_EVENTS = Counter("clearance_gate_exit_events_total",
                           "Exit events the broker acknowledged or failed, and those the producer did not queue "
                           "(all but the acknowledged stay owed in the outbox)", ["result"], registry=GATE_REGISTRY)
GATE_EXIT_EVENTS_RESENT = Counter("clearance_gate_exit_events_resent_total",
                                  "Owed exit events the outbox sweep sent again", registry=GATE_REGISTRY)
GATE_RELEASE_EVENTS = Counter("clearance_gate_release_events_total",
                              "Release-topic records applied, by result (releasable, duplicate, conflict, revoked, "
                              "ignored: a record the gate cannot apply)", ["result"], registry=GATE_REGISTRY)
GATE_RELEASE_LAG = Gauge("clearance_gate_release_lag_records",
                         "Release-topic records not yet applied by this gate service, by partition",
                         ["partition"], registry=GATE_REGISTRY)
GATE_RELEASE_LAG_SECONDS = Gauge("clearance_gate_release_lag_seconds",
                                 "While a release partition lags: age of the newest record this gate service "
                                 "applied from it, or how long it has held the partition if it applied none (0 when "
                                 "caught up); released parcels scan \"unknown\" meanwhile",
                                 ["partition"], registry=GATE_REGISTRY)
GATE_DEPENDENCY_ERRORS = Counter("clearance_gate_dependency_errors_total",
                                 "Gate operations that failed on a dependency (redis, broker)", ["dependency"],
                                 registry=GATE_REGISTRY)
GATE_HEARTBEAT = Gauge("clearance_gate_consumer_heartbeat_timestamp_seconds",
                       "When the gate service's consumer loop last turned (Unix time): it applies release events "
                       "and reads the release lag, so while it is stuck both stop and the lag gauges keep their "
                       "last values", registry=GATE_REGISTRY)
GATE_CONNECTIONS = Gauge("clearance_gate_connections",
                         "Connections the gate API holds open now, kept-alive idle ones included: one more than "
                         "CLEARANCE_GATE_MAX_CONNECTIONS is answered 503 busy", registry=GATE_REGISTRY)
GATE_TLS_CERT_EXPIRY = Gauge("clearance_tls_certificate_expiry_timestamp_seconds", _TLS_EXPIRY_HELP,
                            ["certificate"], registry=GATE_REGISTRY)
GATE_TLS_FILES_VALID = Gauge("clearance_gate_tls_files_valid",
                             "Whether the gate API's certificate, key and client CA (CLEARANCE_GATE_TLS_*) as they "
                             "are now are in force: 0 when the last change was refused (a key of another "
                             "certificate, unreadable, not PEM) and the files before it stay in force; 1 without "
                             "TLS", registry=GATE_REGISTRY)
GATE_TLS_FILES_VALID.set(1)  # until files are refused
GATE_TLS_CRL_NEXT_UPDATE = Gauge("clearance_gate_tls_crl_next_update_timestamp_seconds",
                                 "When the gates' CA's revocation list in force (CLEARANCE_GATE_TLS_CRL) is due to be "
                                 "replaced (its nextUpdate, Unix time): past it every gate certificate is refused",
                                 registry=GATE_REGISTRY)
GATE_TOKENS_FILE_VALID = Gauge("clearance_gate_tokens_file_valid",
                               "Whether the gate service's token files (CLEARANCE_GATE_TOKENS_FILE, "
                               "CLEARANCE_GATE_TOKEN_FILE, CLEARANCE_METRICS_TOKEN_FILE) as they are now are in "
                               "force: 0 when the last change of one was refused (malformed, unreadable, empty) and "
                               "the tokens before it stay in force; 1 without a file", registry=GATE_REGISTRY)
