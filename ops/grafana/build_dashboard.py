"""Writes ops/grafana/clearance.json, the Grafana dashboard (run after editing PANELS).

python ops/grafana/build_dashboard.py
"""
from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${datasource}"}

# (title, unit, [(expr, legend)], width)
PANELS = [
    ("Documents consumed /s by type", "ops", [("sum by (type) (rate(clearance_documents_consumed_total[1m]))", "{{type}}")], 12),
    ("Decisions /s by status", "ops", [("sum by (status, outcome) (rate(clearance_decisions_total[1m]))", "{{status}} {{outcome}}")], 12),
    ("Decision latency (completing document → decision)", "s", [
        ("histogram_quantile(0.50, sum by (le) (rate(clearance_decision_latency_seconds_bucket[5m])))", "p50"),
        ("histogram_quantile(0.90, sum by (le) (rate(clearance_decision_latency_seconds_bucket[5m])))", "p90"),
        ("histogram_quantile(0.99, sum by (le) (rate(clearance_decision_latency_seconds_bucket[5m])))", "p99")], 12),
    ("Decisions /s by lane", "ops", [("sum by (lane) (rate(clearance_decisions_total[1m]))", "{{lane}}")], 12),
    ("Consumer lag (records) by topic", "short", [("sum by (topic) (clearance_consumer_lag_records)", "{{topic}}")], 12),
    ("Consumer lag (seconds) by partition", "s", [("max by (topic, partition) (clearance_consumer_lag_seconds)", "{{topic}}/{{partition}}")], 12),
    ("Pending matches and oldest age", "short", [("max(clearance_pending_matches)", "pending"),
                                                 ("max(clearance_pending_oldest_age_seconds)", "oldest age (s)"),
                                                 ("max(clearance_timeout_watermark_delay_seconds)",
                                                  "timeout clock delay (s)")], 12),
    ("Match timeouts /s by missing document", "ops", [("sum by (missing) (rate(clearance_match_timeouts_total[5m]))", "CEB{{missing}}"),
                                                       ("sum(rate(clearance_waybills_unclaimed_total[5m]))", "waybill no list named")], 12),
    ("Errors /s by reason", "ops", [("sum by (reason) (rate(clearance_errors_total[5m]))", "{{reason}}")], 12),
    ("Dead-letter records /s and dependency errors /s", "ops", [
        ("sum by (reason) (rate(clearance_deadletter_records_total[5m]))", "dead-letter {{reason}}"),
        ("sum by (dependency) (rate(clearance_dependency_errors_total[5m]))", "failed batch: {{dependency}}")], 12),
    ("Stage time p99 per batch", "s", [("histogram_quantile(0.99, sum by (le, stage) (rate(clearance_stage_duration_seconds_bucket[5m])))", "{{stage}}")], 12),
    ("Top rules fired /s", "ops", [("topk(10, sum by (rule) (rate(clearance_rule_hits_total[5m])))", "{{rule}}")], 12),
    ("Per worker: documents /s", "ops", [("sum by (instance) (rate(clearance_documents_consumed_total[1m]))", "{{instance}}")], 8),
    ("Per worker: CPU (cores)", "short", [("rate(process_cpu_seconds_total{job=\"clearance\"}[1m])", "{{instance}}")], 8),
    ("Per worker: resident memory", "bytes", [("process_resident_memory_bytes{job=\"clearance\"}", "{{instance}}")], 8),
    ("Rule set in force per worker", "short", [("clearance_ruleset_info", "{{instance}} {{version}}")], 8),
    ("Rebalances and officer reviews", "short", [("sum(increase(clearance_rebalances_total[15m]))", "rebalances (15 min)"),
                                                 ("sum by (result) (increase(clearance_reviews_total[15m]))", "reviews {{result}} (15 min)")], 8),
    ("Receipts /s by type and status", "ops", [("sum by (type, status) (rate(clearance_receipts_total[1m]))", "{{type}} {{status}}")], 8),
    ("Redis memory (used and maxmemory)", "bytes", [("max(clearance_redis_used_memory_bytes)", "used"),
                                                    ("max(clearance_redis_maxmemory_bytes)", "maxmemory (0: none)")], 8),
    ("Lists held for their guarantee (15 min) by guarantor", "short", [
        ("sum by (assure_code) (increase(clearance_guarantee_held_total[15m]))", "{{assure_code}}")], 8),
    ("Certificates: days until expiry (signing cards, TLS)", "short", [
        ("(min by (cop_code) (clearance_signing_certificate_expiry_timestamp_seconds) - time()) / 86400", "card {{cop_code}}"),
        ("(min by (instance, certificate) (clearance_tls_certificate_expiry_timestamp_seconds) - time()) / 86400",
         "{{certificate}} {{instance}}")], 8),
    ("Exit events owed (the gates' outbox)", "short", [
        ("max(clearance_gate_exit_events_owed)", "owed")], 8),
    ("Gate API requests /s by route and status", "ops", [
        ("sum by (route, code) (rate(clearance_gate_requests_total{route!~\"metrics|health\"}[1m]))",
         "{{route}} {{code}}")], 8),
    ("Gate scans /s by answer, exits /s by result", "ops", [
        ("sum by (answer) (rate(clearance_gate_scans_total[1m]))", "scan {{answer}}"),
        ("sum by (result) (rate(clearance_gate_exits_total[1m]))", "exit {{result}}")], 8),
    ("Gates behind the release topic", "s", [
        ("max by (partition) (clearance_gate_release_lag_seconds)", "partition {{partition}} (s)"),
        ("sum(clearance_gate_release_lag_records)", "records"),
        ("max(time() - clearance_gate_consumer_heartbeat_timestamp_seconds)", "since a consumer loop last turned (s)")], 8),
]


def build() -> dict:
    panels, x, y = [], 0, 0
    for i, (title, unit, targets, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + 8
        panels.append({
            "id": i + 1, "type": "timeseries", "title": title, "datasource": DS,
            "gridPos": {"x": x, "y": y, "w": width, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": expr, "legendFormat": legend}
                        for j, (expr, legend) in enumerate(targets)],
        })
        x += width
    return {
        "uid": "clearance-workers", "title": "Clearance workers", "tags": ["clearance", "kafka"],
        "timezone": "browser", "schemaVersion": 38, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                 "label": "Prometheus"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("clearance.json")
    out.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
