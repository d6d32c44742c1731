"""`clearance` command line: worker, services, topics, publish, gate, demo."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Any

from config.settings import Settings, SettingsError, load_settings


def _need_services(settings: Settings) -> None:
    if settings.embedded_kafka or settings.embedded_redis:
        sys.exit("KAFKA_BOOTSTRAP and REDIS_URL must name the broker and Redis; "
                 "`clearance services` starts embedded ones and prints them, `clearance demo` runs everything.")


def _order_key(settings: Settings, order_no: str, ebp: str | None, scan: bool = False) -> str:
    """The order key of an orderNo: of the platform given, or of the only
    platform that declared it (state.order_keys_for; `scan`: the keyspace too)."""
    from streams import state

    state.use_namespace(settings.redis_namespace)  # before a key is built without a client
    if ebp:
        return state.order_key(ebp, order_no, settings.redis_buckets)
    keys = state.order_keys_for(state.sync_client_for(settings), order_no, settings.redis_buckets, scan)
    if not keys:
        sys.exit(f"{order_no}: no order with this number" + ("" if scan else _SCAN_HINT))
    if len(keys) > 1:
        platforms = ", ".join(state.platform_of(k) for k in keys)
        sys.exit(f"{order_no}: declared by several platforms ({platforms}); name one with --ebp")
    return keys[0]


_SCAN_HINT = (" (orders decided by a version before the orderNo index, within CLEARANCE_DECIDED_TTL_S of "
              "upgrading, are found with --scan)")


def cmd_worker(args: argparse.Namespace) -> None:
    from config.settings import pii_key_problem
    from streams.auth import SharedToken

    settings = load_settings()
    _need_services(settings)
    problem = pii_key_problem(settings.pii_key)
    if problem:
        sys.exit(problem)
    try:
        SharedToken("CLEARANCE_HTTP_TOKEN")
        SharedToken("CLEARANCE_METRICS_TOKEN")
    except ValueError as exc:
        sys.exit(str(exc))
    if args.web_port:
        settings = dataclasses.replace(settings, web_port=args.web_port)
    from topics.registry import ensure_topics

    ensure_topics(settings)
    from streams.app import create_app, tune_gc

    app = create_app(settings)
    tune_gc()
    sys.argv = [sys.argv[0], "worker", "-l", args.loglevel, "--web-port", str(settings.web_port)]
    app.main()


def cmd_services(args: argparse.Namespace) -> None:
    from streams import embedded
    from topics.registry import ensure_topics

    settings = load_settings()
    services = embedded.start(settings.kafka_bootstrap, settings.redis_url)
    settings = dataclasses.replace(settings, kafka_bootstrap=services.kafka_bootstrap,
                                   redis_url=services.redis_url)
    ensure_topics(settings)
    for k, v in services.env().items():
        print(f"export {k}={v}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        services.stop()


def cmd_topics(args: argparse.Namespace) -> None:
    from topics.registry import ALL, ensure_topics, topic_name

    settings = load_settings()
    _need_services(settings)
    ensure_topics(settings)
    for t in ALL:
        print(f"{topic_name(t, settings):28} key={t.key:32} {t.description}")


def cmd_publish(args: argparse.Namespace) -> None:
    from streams.simulator import Publisher, generate
    from topics import ceb

    settings = load_settings()
    _need_services(settings)
    pub = Publisher(settings, args.format, args.batch, duplicate_rate=args.duplicates)
    if args.file:
        data = open(args.file, "rb").read()
        how = ""
        if args.format == "dxp" and not ceb.looks_enveloped(data):
            data, node = _in_envelope(data, args.node, settings.dxp_id)
            how = f" in a DxpMsg from node {node}"
        pub.send_raw(args.type, os.path.basename(args.file), data)
        pub.flush()
        print(f"published {args.file}{how} to the CEB{args.type} topic")
        return
    orders = list(generate(args.orders, seed=args.seed, start=args.start, platforms=args.platforms))
    pub.send(orders)
    pub.flush()
    print(f"published {len(orders)} orders: {pub.sent}")


def _in_envelope(message: bytes, node: str | None, receiver: str) -> tuple[bytes, str]:
    """A CEB XML file in the DxpMsg its sender's terminal node would send: from
    `node`, else from the node its BaseTransfer dxpId names."""
    from topics import ceb

    named = re.search(rb"<(?:[\w.-]+:)?dxpId>([^<]{1,16})</", message)
    root = re.search(rb"<(?:[\w.-]+:)?(CEB\d{3}Message)\b", message)
    node = node or (named.group(1).decode("utf-8", "replace").strip() if named else "")
    if not node:
        sys.exit("--node: the file's BaseTransfer names no node id of 16 characters or less; say which node sends it")
    return ceb.dxp_wrap(message, node, receiver, root.group(1).decode() if root else ""), node


def cmd_gate(args: argparse.Namespace) -> None:
    from streams.auth import GateTokens, SharedToken
    from streams.gate import run_gate

    try:
        GateTokens.from_env()
        SharedToken("CLEARANCE_GATE_TOKEN")
        SharedToken("CLEARANCE_METRICS_TOKEN")
    except ValueError as exc:
        sys.exit(str(exc))
    settings = load_settings()
    _need_services(settings)
    logging.basicConfig(level=logging.INFO)
    n = run_gate(settings, group=args.group or settings.gate_group, max_seconds=args.duration,
                 http_port=args.http_port if args.http_port is not None else settings.gate_port,
                 http_host=args.http_host or settings.gate_host)
    print(f"gate: {n} parcels recorded releasable")


def _gate() -> Any:
    from streams.gate import Gate

    settings = load_settings()
    _need_services(settings)
    return Gate(settings)


def cmd_scan(args: argparse.Namespace) -> None:
    import json

    info = _gate().scan(args.logistics_no)
    print(json.dumps(info, ensure_ascii=False) if args.json else info["answer"])


def cmd_exit(args: argparse.Namespace) -> None:
    import json

    gate = _gate()
    try:
        print(json.dumps(gate.exit(args.logistics_no, args.gate), ensure_ascii=False))
    finally:
        gate.close()


def cmd_batch(args: argparse.Namespace) -> None:
    import json

    gate = _gate()
    try:
        if args.exit:
            print(json.dumps(gate.batch_exit(args.area, args.gate, args.bill), ensure_ascii=False))
        else:
            for ln in gate.batch(args.area, args.bill):
                print(ln)
    finally:
        gate.close()


def cmd_exits_owed(args: argparse.Namespace) -> None:
    import json

    gate = _gate()
    out = {"owed": gate.pending_exits()}
    if args.send:  # now, whatever their age: the operator asks because no gate service is sending them
        try:
            out["sent"] = gate.publish_pending(older_than_ms=0)
        finally:
            gate.close()
        out["owedAfter"] = gate.pending_exits()
    print(json.dumps(out))


def cmd_guarantee(args: argparse.Namespace) -> None:
    import orjson
    from confluent_kafka import Producer

    from processors.aftercare import cents
    from streams import state
    from topics.registry import GUARANTEES, topic_name

    settings = load_settings()
    _need_services(settings)
    r = state.sync_client_for(settings)
    g, held = state.guarantee_keys(args.assure_code, settings.redis_buckets)
    if args.action == "set":
        r.hset(g, mapping={"balance": cents(args.amount), "used": r.hget(g, "used") or 0})
    elif args.action == "topup":
        r.hincrby(g, "balance", cents(args.amount))
        r.hsetnx(g, "used", 0)
    if args.action in ("set", "topup"):
        producer = Producer(settings.librdkafka_config())
        producer.produce(topic_name(GUARANTEES, settings), orjson.dumps({"assureCode": args.assure_code,
                                                                          "action": args.action}),
                         args.assure_code.encode())
        producer.flush(10)
    balance, used = (int(x or 0) for x in r.hmget(g, "balance", "used"))
    print(f"guarantor {args.assure_code}: balance {balance / 100:.2f}, used {used / 100:.2f}, "
          f"remaining {(balance - used) / 100:.2f}, held lists {r.zcard(held)}")


def cmd_tax(args: argparse.Namespace) -> None:
    from processors.aftercare import tax_period
    from streams import state

    settings = load_settings()
    _need_services(settings)
    period = args.period or tax_period(int(time.time() * 1000))
    # The sums only (record ids are kept beside them; earlier versions kept them here as rec:<id>).
    raw = {k.decode(): int(v) for k, v in state.sync_client_for(settings)
           .hgetall(state.tax_period_key(period)).items() if not k.startswith(b"rec:")}
    rows: dict[str, dict[str, int]] = {}
    for k, v in raw.items():
        assure, field = k.rsplit(":", 1)
        rows.setdefault(assure, {})[field] = v
    print(f"tax period {period}")
    print(f"{'guarantor':20} {'lists':>6} {'customs':>12} {'VAT':>12} {'consumption':>12} {'total':>12}")
    for assure, f in sorted(rows.items()):
        print(f"{assure:20} {f.get('lists', 0):>6} " + " ".join(
            f"{f.get(x, 0) / 100:>12.2f}" for x in ("customsTax", "valueAddedTax", "consumptionTax", "taxTotal")))


def cmd_trace(args: argparse.Namespace) -> None:
    import json

    from streams import state, trace

    settings = load_settings()
    _need_services(settings)
    t = trace.lineage(state.sync_client_for(settings), args.ident, settings.redis_buckets, args.ebp, args.scan,
                      args.pay)
    if t is None and args.pay:
        sys.exit(f"{args.ident}: no order holds this payment serial of {args.pay} (a rejected or cancelled order, "
                 "or one decided before the claims, holds none)")
    if t is None:
        sys.exit(f"{args.ident}: no order, waybill or list with this number" + ("" if args.scan else _SCAN_HINT))
    print(json.dumps(t, ensure_ascii=False, indent=1) if args.json else trace.text(t))


def cmd_migrate_keys(args: argparse.Namespace) -> None:
    from streams import migrate, state

    settings = load_settings()
    _need_services(settings)
    done = migrate.migrate_order_keys(state.sync_client_for(settings), settings.redis_buckets, args.dry_run)
    _report(done, "would migrate: " if args.dry_run else "migrated: ", "nothing to migrate")


def _report(done: Any, lead: str, nothing: str) -> None:
    """What a migration did (or would do), by kind."""
    what = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(done.items()))
    print(lead + what if what else nothing)


def cmd_migrate_retention(args: argparse.Namespace) -> None:
    from streams import migrate, state

    settings = load_settings()
    _need_services(settings)
    done = migrate.migrate_retention(state.sync_client_for(settings), settings.decided_ttl_s, int(time.time() * 1000),
                                     args.dry_run)
    _report(done, "would change: " if args.dry_run else "changed: ", "nothing to change")


def cmd_migrate_claims(args: argparse.Namespace) -> None:
    from streams import migrate, state

    settings = load_settings()
    _need_services(settings)
    done = migrate.migrate_claims(state.sync_client_for(settings), settings.unique_ttl_s, int(time.time() * 1000),
                                  settings.redis_buckets, args.dry_run, settings.unique_kinds)
    _report(done, "would claim: " if args.dry_run else "claimed: ", "nothing to claim")


def cmd_resume(args: argparse.Namespace) -> None:
    """Lift the halt a worker set when Redis lost data (CLEARANCE_REDIS_LOSS=halt):
    every worker of the namespace decides again within a second."""
    from streams import state

    settings = load_settings()
    _need_services(settings)
    r = state.sync_client_for(settings)
    reason = r.get(state.halt_key())
    if reason is None:
        print(f"not halted (Redis namespace {settings.redis_namespace!r})")
        return
    r.delete(state.halt_key())
    print(f"resumed (Redis namespace {settings.redis_namespace!r}); the halt was: {state.as_text(reason)}")


def cmd_signature(args: argparse.Namespace) -> None:
    """Onboarding a signer: a certificate's fingerprint for the register
    (enterprises.csv, column certs), or a signed message checked as the
    worker checks it, with the certificate that signed it and whether the
    register lists it for the message's copCode."""
    import binascii

    from processors import features, ruleset
    from topics import ceb, xmlsig

    data = open(args.file, "rb").read()
    if b"-----BEGIN CERTIFICATE-----" in data or data[:1] == b"\x30":
        der = data
        if data[:1] != b"\x30":
            body = data.split(b"-----BEGIN CERTIFICATE-----", 1)[1].split(b"-----END CERTIFICATE-----", 1)[0]
            try:
                der = binascii.a2b_base64(b"".join(body.split()))
            except binascii.Error as exc:
                sys.exit(f"not a PEM certificate: {exc}")
        try:
            cert = xmlsig.parse_certificate(der)
        except xmlsig.SignatureError as exc:
            sys.exit(exc.info)
        print(f"{cert.fingerprint}  {cert.algorithm.upper()} key, valid {cert.not_before:%Y-%m-%d} to "
              f"{cert.not_after:%Y-%m-%d}")
        return
    try:
        msg = ceb.decode(data)
    except ceb.CebError as exc:
        sys.exit(f"refused ({exc.status} {exc.reason}): {exc.info}")
    if not msg.signer:
        sys.exit(f"CEB{msg.kind}: valid, but not signed")
    rules = os.environ.get("CLEARANCE_RULES", "")
    engine = ruleset.load(rules if rules and rules != "spine" else ruleset.DEFAULT_RULESET)
    registered = features.registered_certs(engine.reference.enterprises, msg.cop_code)
    verdict = ("registered to it" if msg.signer in registered else
               "NOT one registered to it (R13)" if registered else "the register lists none for it: not checked")
    print(f"CEB{msg.kind}: signature verifies; certificate {msg.signer}; copCode {msg.cop_code}: {verdict}")


def cmd_rules(args: argparse.Namespace) -> None:
    import json

    from processors import ruleset

    if args.action == "schema":
        print(json.dumps(ruleset.schema(), indent=1, ensure_ascii=False))
        return
    try:
        document = ruleset.load_file(args.file or ruleset.DEFAULT_RULESET)
        engine = ruleset.compile_ruleset(document)
    except ruleset.RuleSetError as exc:
        sys.exit(f"rule set refused: {exc}")
    print(f"rule set {engine.version}: {len(engine.rules)} rules, {len(engine.ledgers)} ledgers, "
          f"{len(engine.reference.positive)} positive-list lines — valid")
    if args.action == "push":
        from confluent_kafka import Producer

        from streams.rules_feed import encode
        from topics.registry import RULES, ensure_topics, topic_name

        settings = load_settings()
        _need_services(settings)
        ensure_topics(settings)
        producer = Producer(settings.librdkafka_config())
        producer.produce(topic_name(RULES, settings), encode(document, os.environ.get("USER", "")), b"ruleset")
        if producer.flush(15):
            sys.exit("rule set not delivered to the broker")
        print(f"published rule set {engine.version}; workers switch at their next batch")


def cmd_explain(args: argparse.Namespace) -> None:
    import orjson

    from streams import state

    settings = load_settings()
    _need_services(settings)
    r = state.sync_client_for(settings)
    key = _order_key(settings, args.order_no, args.ebp, args.scan)
    raw = r.hmget(key, "dec", "final", "first", "m311", "m411", "m511", "m621")
    if raw[0] is None:
        present = [t for t, v in zip(("311", "411", "511", "621"), raw[3:]) if v is not None]
        sys.exit(f"{args.order_no}: no decision yet" + (f" (documents received: {', '.join(present)})"
                                                        if present else " and no documents"))
    d = orjson.loads(raw[1] or raw[0])
    if args.json:
        print(orjson.dumps(d, option=orjson.OPT_INDENT_2).decode())
        return
    print(explain_text(d, orjson.loads(raw[0]) if raw[1] else None))


def explain_text(d: dict[str, Any], provisional: dict[str, Any] | None = None) -> str:
    lines = [f"order {d['orderNo']} (platform {d['ebpCode']}): {d['status']} {d['outcome']}, lane {d['lane']}"
             + (" — post-clearance audit" if d.get("postAudit") else ""),
             f"rule set {d['ruleSetVersion']}; list {d.get('invtNo', '-')}; dutiable price {d.get('dutiablePrice', '-')}"]
    if provisional:
        lines.append(f"provisional decision {provisional['status']} ({provisional['lane']}), "
                     f"officer result: {d['review']['result']} by {d['review']['officer'] or '-'}")
    if d.get("missing"):
        lines.append("missing documents: " + ", ".join(d["missing"]))
    if not d["reasons"]:
        lines.append("no rule fired")
    for r in d["reasons"]:
        code = f" [{r['code']}]" if r.get("code") else ""
        lines.append(f"  - {r['rule']}: {r['reason']}{code} → {r.get('lane', '')} — {r['info']}")
        for k, v in (r.get("evidence") or {}).items():
            lines.append(f"      {k} = {v}")
    if d.get("tax"):
        t = d["tax"]
        lines.append(f"tax: total {t['taxTotal']} (customs {t['customsTax']}, VAT {t['valueAddedTax']}, "
                     f"consumption {t['consumptionTax']}){' — full rates' if t.get('full') else ''}")
    if d.get("quota"):
        q = d["quota"]
        lines.append(f"annual quota {q['year']}: {q['usedBefore'] / 100:.2f} used before, "
                     f"{q['amount'] / 100:.2f} this order, reserved: {q['reserved']}")
    return "\n".join(lines)


def cmd_review(args: argparse.Namespace) -> None:
    import orjson
    from confluent_kafka import Producer

    from streams import state
    from topics.registry import REVIEWS, topic_name

    settings = load_settings()
    _need_services(settings)
    result = "release" if args.release else "reject"
    ebp = args.ebp or state.platform_of(_order_key(settings, args.order_no, None, args.scan))
    record = {"ebpCode": ebp, "orderNo": args.order_no, "result": result, "officer": args.officer, "note": args.note,
              "at": int(time.time() * 1000)}
    producer = Producer(settings.librdkafka_config())
    producer.produce(topic_name(REVIEWS, settings), orjson.dumps(record), args.order_no.encode())
    if producer.flush(15):
        sys.exit("review result not delivered to the broker")
    print(f"review result for {args.order_no}: {result}")


def cmd_top(args: argparse.Namespace) -> None:
    from streams.top import run_top

    urls = args.urls or [f"http://127.0.0.1:{load_settings().web_port}"]
    run_top(urls, args.interval, args.once)


def cmd_bench(args: argparse.Namespace, rest: list[str]) -> None:
    from benchmarks import throughput

    sys.argv = ["clearance bench", *rest]
    throughput.main()


def cmd_deadletter(args: argparse.Namespace) -> None:
    from collections import Counter

    from processors.documents import mask_personal
    from streams import deadletter, state

    settings = load_settings()
    _need_services(settings)
    letters = deadletter.read(settings)
    since = int((time.time() - args.since_hours * 3600) * 1000) if args.since_hours else None
    chosen = deadletter.select(letters, args.reason, args.source, args.id, since, args.message)
    if args.action == "list":
        for d in chosen[-args.limit:] if args.limit else chosen:
            r = d.record
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(int(r.get("rejectedAt") or 0) / 1000))
            print(f"{d.id:>10}  {at}  {r.get('reason', ''):24} {r.get('returnStatus', ''):>4}  {d.source:40} "
                  f"{len(d.value):>8} B  {mask_personal(str(r.get('info', '')))[:80]}")
        counts = Counter(str(d.record.get("reason")) for d in chosen)
        summary = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
        print(f"{len(chosen)} dead letters" + (f" ({summary})" if summary else "")
              + (f" of {len(letters)} in the topic" if len(chosen) != len(letters) else ""))
        return
    if args.action == "show":
        if not args.id:
            sys.exit("show which? name dead letters by partition:offset (from `clearance deadletter list`)")
        if not chosen:
            sys.exit("no dead letter matches (the id is partition:offset of the dead-letter topic, from `list`)")
        for d in chosen:
            r = d.record
            print(f"dead letter {d.id}: {r.get('reason')} (returnStatus {r.get('returnStatus')}), "
                  f"message type {r.get('messageType')}")
            print(f"  from {d.source}, rejected at {r.get('rejectedAt')}, key {d.key!r}")
            if r.get("envelope"):
                print(f"  DxpMsg {r['envelope'].get('copMsgId')} from node {r['envelope'].get('senderId')}")
            print(f"  info: {mask_personal(str(r.get('info', '')))}")
            text = deadletter.readable(d.value)
            # Personal data stays masked unless asked for: this output ends up in tickets.
            print(text if args.reveal else mask_personal(text))
        return
    if not (args.reason or args.id or args.source or args.all):
        sys.exit("replay what? name --reason, --source or dead-letter IDs (partition:offset), or --all")
    result = deadletter.replay(settings, chosen, state.sync_client_for(settings), again=args.again,
                               dry_run=args.dry_run)
    verb = "would replay" if args.dry_run else "replayed"
    print(f"{verb} {len(result.sent)} dead letters to their inbound topics"
          + (f"; {len(result.already)} replayed before (--again to send them again)" if result.already else ""))
    for d, why in result.refused:
        print(f"  not replayed {d.id}: {why}")
    if result.refused:
        sys.exit(1)


def cmd_demo(args: argparse.Namespace) -> None:
    from streams.demo import run_demo

    sys.exit(run_demo(args))


def _scan_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scan", action="store_true",
                        help="for an orderNo given alone, also search Redis's whole keyspace: orders decided before "
                             "the orderNo index existed (minutes for millions of keys)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="clearance", description="Real-time CBEC customs clearance processor")
    sub = p.add_subparsers(dest="cmd", required=True)

    w = sub.add_parser("worker", help="run a clearance worker (KAFKA_BOOTSTRAP, REDIS_URL)")
    w.add_argument("--web-port", type=int, default=0, help="port of /metrics (default CLEARANCE_WEB_PORT)")
    w.add_argument("--loglevel", default="info", choices=["crit", "error", "warn", "info", "debug"])
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("services", help="start the embedded broker and Redis and print their addresses")
    s.set_defaults(func=cmd_services)

    t = sub.add_parser("topics", help="create the registered topics and list them")
    t.set_defaults(func=cmd_topics)

    pb = sub.add_parser("publish", help="publish simulated CEB traffic or one file")
    pb.add_argument("--orders", type=int, default=100)
    pb.add_argument("--start", type=int, default=0, help="first order sequence number")
    pb.add_argument("--seed", type=int, default=1)
    pb.add_argument("--format", choices=["json", "xml", "dxp"], default="json",
                    help="dxp: CEB XML in the DxpMsg envelope of a terminal node")
    pb.add_argument("--batch", type=int, default=1, help="documents per record (1..100)")
    pb.add_argument("--duplicates", type=float, default=0.0, help="share of documents sent twice")
    pb.add_argument("--platforms", type=int, default=1, choices=[1, 2, 3],
                    help="platforms, each numbering its own orders (orderNos recur across them)")
    pb.add_argument("--file", help="publish this CEB file as one record instead (--format dxp: in a DxpMsg)")
    pb.add_argument("--node", help="--file --format dxp: the sending node (default: the file's BaseTransfer dxpId)")
    pb.add_argument("--type", choices=["311", "411", "511", "621"], default="311")
    pb.set_defaults(func=cmd_publish)

    g = sub.add_parser("gate", help="reference warehouse gate: consumes release events, serves scans and exits")
    g.add_argument("--group", default="", help="consumer group on the release topic (default CLEARANCE_GATE_GROUP, "
                                               "clearance-gate)")
    g.add_argument("--duration", type=float, default=None)
    g.add_argument("--http-port", type=int, default=None,
                   help="serve /scan, /exit, /batch, /metrics and /health on this port (default CLEARANCE_GATE_PORT; "
                        "0: no HTTP API)")
    g.add_argument("--http-host", default="", help="address the API listens on (default CLEARANCE_GATE_HOST, "
                                                   "127.0.0.1)")
    g.set_defaults(func=cmd_gate)

    sc = sub.add_parser("scan", help="may this parcel leave? release / hold / unknown")
    sc.add_argument("logistics_no")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_scan)

    xt = sub.add_parser("exit", help="record that a parcel left through a gate (once)")
    xt.add_argument("logistics_no")
    xt.add_argument("--gate", required=True)
    xt.set_defaults(func=cmd_exit)

    bt = sub.add_parser("batch", help="releasable parcels of an area not yet exited; --exit to let them out")
    bt.add_argument("--area", required=True)
    bt.add_argument("--bill", default="")
    bt.add_argument("--exit", action="store_true")
    bt.add_argument("--gate", default="")
    bt.set_defaults(func=cmd_batch)

    eo = sub.add_parser("exits-owed", help="exit events recorded but not yet acknowledged by the broker; --send sends them")
    eo.add_argument("--send", action="store_true")
    eo.set_defaults(func=cmd_exits_owed)

    gu = sub.add_parser("guarantee", help="a guarantor's tax guarantee: show, set, topup")
    gu.add_argument("action", choices=["show", "set", "topup"])
    gu.add_argument("assure_code")
    gu.add_argument("amount", nargs="?", default="0")
    gu.set_defaults(func=cmd_guarantee)

    tx = sub.add_parser("tax", help="tax aggregated per guarantor for a half-month period")
    tx.add_argument("action", choices=["report"])
    tx.add_argument("--period", default="", help="YYYY-MM-1 or YYYY-MM-2 (default: the current one)")
    tx.set_defaults(func=cmd_tax)

    tr = sub.add_parser("trace", help="lineage of an order, waybill or list: documents, rules, decision, gate")
    tr.add_argument("ident", help="orderNo, logisticsNo or invtNo (or a payTransactionId, with --pay)")
    tr.add_argument("--ebp", help="the platform's ebpCode, for an orderNo several platforms used")
    tr.add_argument("--pay", help="the payCode of the payment company whose payTransactionId IDENT is")
    tr.add_argument("--json", action="store_true")
    _scan_option(tr)
    tr.set_defaults(func=cmd_trace)

    d = sub.add_parser("demo", help="run everything embedded with live output")
    d.add_argument("--duration", type=float, default=60.0, help="seconds (Ctrl-C stops earlier)")
    d.add_argument("--rate", type=float, default=200.0, help="orders per second")
    d.add_argument("--format", choices=["json", "xml", "dxp", "mixed"], default="mixed")
    d.add_argument("--batch", type=int, default=20, help="documents per CEB message")
    d.add_argument("--workers", type=int, default=1)
    d.add_argument("--match-timeout", type=float, default=10.0)
    d.set_defaults(func=cmd_demo)

    ru = sub.add_parser("rules", help="validate, publish or describe rule sets")
    ru.add_argument("action", choices=["validate", "push", "schema"])
    ru.add_argument("file", nargs="?", default=None, help="default: config/rules/default.yaml")
    ru.set_defaults(func=cmd_rules)

    sg = sub.add_parser("signature", help="a certificate's fingerprint for the register, or check a signed message")
    sg.add_argument("file", help="a certificate (PEM or DER) or a CEB XML message (bare or in a DxpMsg)")
    sg.set_defaults(func=cmd_signature)

    mk = sub.add_parser("migrate-keys", help="match state of a version before the (ebpCode, orderNo) key: "
                                             "run once with every worker stopped")
    mk.add_argument("--dry-run", action="store_true", help="count what would change, change nothing")
    mk.set_defaults(func=cmd_migrate_keys)

    mr = sub.add_parser("migrate-retention", help="state of a version before the 35-day retention: keep decided "
                                                   "orders through the return window, expire settled parcels "
                                                   "(safe while workers run)")
    mr.add_argument("--dry-run", action="store_true", help="count what would change, change nothing")
    mr.set_defaults(func=cmd_migrate_retention)

    mc = sub.add_parser("migrate-claims", help="decided orders of a version before one order per waybill "
                                               "number and payment serial: claim their numbers (run once with "
                                               "every worker stopped)")
    mc.add_argument("--dry-run", action="store_true", help="count what would change, change nothing")
    mc.set_defaults(func=cmd_migrate_claims)

    rs = sub.add_parser("resume", help="workers halted because Redis lost data (CLEARANCE_REDIS_LOSS=halt) decide "
                                       "again: after restoring Redis, or accepting what it lost")
    rs.set_defaults(func=cmd_resume)

    ex = sub.add_parser("explain", help="why an order got its decision")
    ex.add_argument("order_no")
    ex.add_argument("--ebp", help="the platform's ebpCode (needed when several platforms used the orderNo)")
    ex.add_argument("--json", action="store_true", help="the stored decision record")
    _scan_option(ex)
    ex.set_defaults(func=cmd_explain)

    rv = sub.add_parser("review", help="an officer's result for an order in manual review or inspection")
    rv.add_argument("order_no")
    rv.add_argument("--ebp", help="the platform's ebpCode (default: the only platform with this orderNo)")
    which = rv.add_mutually_exclusive_group(required=True)
    which.add_argument("--release", action="store_true")
    which.add_argument("--reject", action="store_true")
    rv.add_argument("--officer", default=os.environ.get("USER", ""))
    rv.add_argument("--note", default="")
    _scan_option(rv)
    rv.set_defaults(func=cmd_review)

    dl = sub.add_parser("deadletter", help="rejected input: list it, show one record, replay once the cause is fixed")
    dl.add_argument("action", choices=["list", "show", "replay"])
    dl.add_argument("id", nargs="*", help="dead letters by partition:offset (from list)")
    dl.add_argument("--reason", action="append", help="only this reason (repeatable), e.g. internal_error")
    dl.add_argument("--source", help="only records from this inbound topic (e.g. ceb.import.order)")
    dl.add_argument("--since-hours", type=float, default=0, help="only records rejected in the last N hours")
    dl.add_argument("--message", help="only the record of this DxpMsg CopMsgId (a sender's CEB900 oriCopMsgId)")
    dl.add_argument("--limit", type=int, default=0, help="list: the last N only")
    dl.add_argument("--reveal", action="store_true", help="show: personal data in clear (masked by default)")
    dl.add_argument("--all", action="store_true", help="replay: every dead letter (after a fix of our own)")
    dl.add_argument("--again", action="store_true", help="replay: also those replayed before")
    dl.add_argument("--dry-run", action="store_true", help="replay: say what would be sent, send nothing")
    dl.set_defaults(func=cmd_deadletter)

    tp = sub.add_parser("top", help="live view of workers (documents/s, decisions/s, latency, lag, pending) and "
                                    "gate services (scans, exits, 5xx, lag behind the release topic)")
    tp.add_argument("urls", nargs="*", help="worker or gate-service base URLs (default "
                                            "http://127.0.0.1:CLEARANCE_WEB_PORT)")
    tp.add_argument("--interval", type=float, default=1.0)
    tp.add_argument("--once", action="store_true", help="print one frame and exit")
    tp.set_defaults(func=cmd_top)

    bn = sub.add_parser("bench", help="throughput and latency of worker(s) on the embedded broker "
                                      "(options: python -m benchmarks.throughput --help)", add_help=False)
    bn.set_defaults(func=cmd_bench)

    args, rest = p.parse_known_args(argv)
    if args.func is cmd_bench:
        cmd_bench(args, rest)
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.func(args)
    except SettingsError as exc:  # a setting that cannot work: say which, without a traceback
        sys.exit(f"clearance {args.cmd}: {exc}")


if __name__ == "__main__":
    main()
