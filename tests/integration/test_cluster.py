"""On a three-node Redis Cluster (REDIS_CLUSTER=1): the batch client's routing
by slot and its redirections, and the pipeline deciding exactly as on one
Redis. The gate, cancels, returns, top-ups and trace on a cluster are in
test_after_release.py (its world runs on both)."""
from __future__ import annotations

import asyncio

import orjson
import pytest
import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions
from redis.crc import key_slot

from streams import resp, state
from topics import registry
from tests.helpers import doc_records, order, run_pipeline

pytestmark = pytest.mark.integration


def batch(url: str, commands: list[tuple], before=None) -> tuple[list, resp.ClusterClient]:
    async def go():
        client = resp.Client.like(state.async_client(url, cluster=True))
        assert isinstance(client, resp.ClusterClient)
        try:
            if before is not None:
                await client.execute([("PING",)])  # the slot map is read now, before the change
                before()
            return await client.execute(commands), client
        finally:
            await client.aclose()

    return asyncio.run(go())


def key_in_slot_of(owner: int, cluster, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(10_000) if cluster.owner(key_slot(f"{prefix}{i}".encode())) == owner)


def test_each_command_goes_to_the_node_of_its_slot_and_replies_keep_their_order(redis_cluster):
    keys = [f"clr:o:{{o{b:02d}}}:N{b}" for b in range(16)]  # the worker's 16 order buckets
    sha = redis_cluster.nodes()[0].script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    for r in redis_cluster.nodes()[1:]:
        r.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    commands = [("EVALSHA", sha, 1, k, i + 1) for i, k in enumerate(keys)] + [("GET", k) for k in keys]
    replies, client = batch(redis_cluster.url, commands)
    assert replies == list(range(1, 17)) + [str(i + 1).encode() for i in range(16)]
    nodes = redis_cluster.nodes()
    for i, k in enumerate(keys):
        assert nodes[redis_cluster.owner(key_slot(k.encode()))].get(k) == str(i + 1).encode()
    assert len({redis_cluster.owner(key_slot(k.encode())) for k in keys}) == 3  # all three nodes were used


def test_a_moved_slot_is_followed(redis_cluster):
    nodes = redis_cluster.nodes()
    key = key_in_slot_of(0, redis_cluster, "moved:")
    slot = key_slot(key.encode())
    target = redis_cluster.node_id(nodes[1])

    def move():  # an empty slot changes hands at once
        for r in nodes:
            r.execute_command("CLUSTER SETSLOT", slot, "NODE", target)

    try:
        replies, client = batch(redis_cluster.url, [("SET", key, "here"), ("GET", key)], before=move)
        assert replies == [b"OK", b"here"]
        assert nodes[1].get(key) == b"here" and client.slots[slot][1] == redis_cluster.ports[1]
    finally:
        nodes[1].delete(key)
        for r in nodes:
            r.execute_command("CLUSTER SETSLOT", slot, "NODE", redis_cluster.node_id(nodes[0]))


def test_a_slot_in_migration_is_asked_of_its_new_node(redis_cluster):
    nodes = redis_cluster.nodes()
    key = key_in_slot_of(2, redis_cluster, "asked:")
    slot = key_slot(key.encode())
    source, target = redis_cluster.node_id(nodes[2]), redis_cluster.node_id(nodes[0])
    nodes[0].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source)
    nodes[2].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target)
    try:
        # The key is not on the source: it answers ASK, and the key is written on the target.
        replies, client = batch(redis_cluster.url, [("SET", key, "new")])
        assert replies == [b"OK"]
        assert client.slots[slot][1] == redis_cluster.ports[2]  # an ASK does not change the map
    finally:
        for r in nodes:
            r.execute_command("CLUSTER SETSLOT", slot, "NODE", target)
    assert nodes[0].get(key) == b"new"
    nodes[0].delete(key)
    for r in nodes:
        r.execute_command("CLUSTER SETSLOT", slot, "NODE", source)


def test_the_pipeline_decides_the_same_on_a_cluster_as_on_one_redis(redis_url, redis_cluster):
    scenarios = ["ok", "ok", "amount_mismatch", "buyer_not_payer", "over_single_limit", "missing_payment"]
    orders = [order(700 + i, scenario) for i, scenario in enumerate(scenarios)]
    batches = [doc_records(o) for o in orders]
    batches.append(doc_records(orders[0]))  # duplicates after the decision

    def outcome(url: str, **kw) -> list:
        sink = run_pipeline(url, batches, sweep=True, match_timeout_s=0.0, **kw)
        return sorted((d["orderNo"], d["status"], d["rules"], d.get("invtNo", "")[:9]) for d in sink.decisions())

    single = outcome(redis_url)
    assert outcome(redis_cluster.url, redis_cluster=True) == single
    assert {status for _, status, _, _ in single} >= {800, 100}
    # The order state is spread over the nodes by its slot bucket.
    held = [sum(1 for _ in r.scan_iter("clr:o:*")) for r in redis_cluster.nodes()]
    assert sum(held) == len(orders) and all(held)


def test_scripts_lost_by_a_node_are_loaded_again(redis_cluster):
    from streams.app import process_until_done

    async def go():
        client = state.async_client(redis_cluster.url, cluster=True)
        from config.settings import Settings
        from streams.pipeline import Pipeline
        from tests.helpers import CaptureSink

        sink = CaptureSink()
        p = Pipeline(Settings(kafka_bootstrap="unused:1", redis_url=redis_cluster.url, redis_cluster=True),
                     client, sink)
        await process_until_done(p, doc_records(order(801)))
        for r in redis_cluster.nodes():
            r.script_flush()  # what a node's restart does to its script cache
        await process_until_done(p, doc_records(order(802)))
        await p.aclose()
        await client.aclose()
        return [orjson.loads(v)["orderNo"] for t, _k, v in sink.records if t.endswith("clearance.decisions")]

    assert sorted(asyncio.run(go())) == sorted([order(801).order_no, order(802).order_no])


def test_a_plain_client_cannot_be_mistaken_for_a_cluster_one(redis_url):
    assert isinstance(resp.Client.like(aioredis.from_url(redis_url)), resp.Client)


def test_a_worker_process_and_the_cli_on_a_cluster(services, redis_cluster):
    import random

    from config.settings import load_settings
    from streams.simulator import Publisher, make_order
    from tests.integration.worker import Env, Reader
    from topics import registry

    env = Env(services)
    env.env.update(REDIS_URL=redis_cluster.url, REDIS_CLUSTER="1")
    env.settings = load_settings(env.env)
    try:
        env.start_worker()
        env.wait_assigned()
        rng = random.Random(5)
        orders = [make_order(900 + i, rng, scenario, prefix="CLU")
                  for i, scenario in enumerate(["ok", "ok", "ok", "buyer_not_payer"])]
        pub = Publisher(env.settings, "json", batch=1)
        pub.send(orders)
        pub.flush()
        decided = {orjson.loads(v)["orderNo"]: orjson.loads(v) for _, v in
                   Reader(env, registry.DECISIONS).read_until(lambda r: len(r) >= 4, 60)}
        assert sorted(decided) == sorted(o.order_no for o in orders)
        assert [decided[o.order_no]["status"] for o in orders] == [800, 800, 800, 100]
        # The orders' state is on more than one node, and the CLI finds each.
        held = [sum(1 for _ in r.scan_iter("clr:o:*")) for r in redis_cluster.nodes()]
        assert sum(held) == len(orders) and sum(1 for n in held if n) >= 2
        for o in orders:
            explain = env.cli("explain", o.order_no)
            assert explain.returncode == 0 and o.order_no in explain.stdout, explain.stderr
        assert 'clearance_decisions_total{lane="reject",outcome="reject",status="100"} 1.0' in env.metrics(0)
    finally:
        env.stop()


def test_a_node_that_cannot_be_reached_makes_the_slot_map_be_read_again(redis_cluster):
    from streams.embedded import free_port

    key = "gone:1"
    slot = key_slot(key.encode())

    async def go():
        client = resp.Client.like(state.async_client(redis_cluster.url, cluster=True))
        try:
            await client.execute([("GET", key)])
            client.slots[slot] = ("127.0.0.1", free_port())  # as if its primary had failed over elsewhere
            with pytest.raises(Exception) as failed:
                await client.execute([("SET", key, "x")])
            stale = client.slots
            return failed.value, stale, await client.execute([("SET", key, "x"), ("GET", key)])
        finally:
            await client.aclose()

    error, stale, replies = asyncio.run(go())
    assert isinstance(error, redis_exceptions.ConnectionError) and stale == []
    assert replies == [b"OK", b"x"]  # the batch retried after the map was read again


def _gate_on(cluster, seeds: str = ""):
    from config.settings import Settings
    from streams.gate import Gate

    return Gate(Settings(kafka_bootstrap="unused:1", redis_url=cluster.url, redis_cluster=True,
                         redis_cluster_nodes=seeds))


def _release(ln: str, area: str = "A1") -> dict:
    return {"logisticsNo": ln, "orderNo": "O" + ln, "invtNo": "I" + ln, "areaCode": area, "releasedAt": 1}


def test_the_gate_sends_its_scripts_in_one_pipeline_per_node(redis_cluster):
    gate = _gate_on(redis_cluster)
    for r in redis_cluster.nodes():
        r.script_flush()
    # NOSCRIPT: each script is loaded on every node, and the calls sent again.
    assert gate.record([_release("GPN9999"), {"logisticsNo": "GPN9998", "status": "revoked"}]) == 1
    pipelines: list[str] = []
    real = gate.r.get_redis_connection

    def counted(node):  # the real connection, counted
        pipelines.append(node.name)
        return real(node)

    gate.r.get_redis_connection = counted
    events = [_release(f"GPN{i:04d}") for i in range(30)]
    events.append({"logisticsNo": "GPN0003", "status": "revoked", "orderNo": "OGPN0003", "areaCode": "A1"})
    assert gate.record(events) == 30
    # 31 script calls and an SREM over the three nodes: one pipeline each.
    assert len(pipelines) == len(set(pipelines)) == 3
    assert gate.scan("GPN0001")["answer"] == "release" and gate.scan("GPN0003")["answer"] == "hold"
    assert gate.record(events[:5]) == 0  # replayed: released once
    owners = {redis_cluster.owner(key_slot(gate.key(e["logisticsNo"]).encode())) for e in events}
    assert owners == {0, 1, 2}


def _move_slot(cluster, slot: int, source: int, target: int) -> None:
    """Reshard one slot with its keys, as redis-cli --cluster reshard does."""
    nodes = cluster.nodes()
    src, dst = nodes[source], nodes[target]
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", cluster.node_id(src))
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", cluster.node_id(dst))
    keys = src.execute_command("CLUSTER GETKEYSINSLOT", slot, 10_000)
    if keys:
        src.execute_command("MIGRATE", "127.0.0.1", cluster.ports[target], "", 0, 5000, "KEYS", *keys)
    for r in nodes:
        r.execute_command("CLUSTER SETSLOT", slot, "NODE", cluster.node_id(dst))


def test_the_gate_follows_a_moved_slot_and_reloads_lost_scripts(redis_cluster):
    gate = _gate_on(redis_cluster)
    nodes = redis_cluster.nodes()
    lns = [f"GMV{i:04d}" for i in range(40)]
    assert gate.record([_release(ln, "A2") for ln in lns[:20]]) == 20  # the gate's slot map is read now
    ln = next(x for x in lns[20:] if redis_cluster.owner(key_slot(gate.key(x).encode())) == 0)
    slot = key_slot(gate.key(ln).encode())
    _move_slot(redis_cluster, slot, 0, 1)
    for r in nodes:
        r.script_flush()  # what a restart does to a node's scripts
    try:
        assert gate.record([_release(x, "A2") for x in lns]) == 20  # the first 20 again: released once
        assert nodes[1].hget(gate.key(ln), "state") == b"releasable"
        assert all(gate.scan(x)["answer"] == "release" for x in lns)
    finally:
        _move_slot(redis_cluster, slot, 1, 0)


@pytest.fixture
def replicated_cluster(tmp_path):
    from streams import embedded

    cluster = embedded.LocalCluster(str(tmp_path), replicas=True, node_timeout_ms=1000)
    yield cluster
    cluster.stop()


def test_a_failover_loses_no_document_and_decides_each_order_once(replicated_cluster):
    """A primary is killed between two halves of a set of orders; its replica
    takes over. The worker's batch that meets the dead node fails and is
    retried on the new map; the gate's next batch follows as well."""
    from streams.app import process_until_done
    from streams.pipeline import Pipeline
    from tests.helpers import CaptureSink, settings_for

    cluster = replicated_cluster
    settings = settings_for(cluster.url, redis_cluster=True)
    orders = [order(950 + i) for i in range(16)]
    keys = {o.order_no: state.order_key(o.ebp_code, o.order_no, settings.redis_buckets) for o in orders}
    done, half = orders[:8], orders[8:]
    for group in (done, half):  # decided orders and half-matched ones live on the primary that fails
        assert any(cluster.owner(key_slot(keys[o.order_no].encode())) == 0 for o in group)

    async def go() -> CaptureSink:
        client = state.async_client(cluster.url, cluster=True)
        sink = CaptureSink()
        p = Pipeline(settings, client, sink)
        await process_until_done(p, [r for o in done for r in doc_records(o)])
        await process_until_done(p, [r for o in half for r in doc_records(o, ["311", "411"])])
        cluster.wait_replicated()
        cluster.fail_primary(0)
        # The rest of the half-sent orders, and every document of the decided ones again.
        rest = [r for o in half for r in doc_records(o, ["511", "621"])] + \
               [r for o in done for r in doc_records(o)]
        await asyncio.wait_for(process_until_done(p, rest), 60)
        await p.aclose()
        await client.aclose()
        return sink

    sink = asyncio.run(go())
    seeds = ",".join(f"127.0.0.1:{p}" for p in cluster.ports[1:] + cluster.replica_ports)

    async def fresh_worker() -> CaptureSink:  # started after the failover, REDIS_URL's node gone
        later = settings_for(cluster.url, redis_cluster=True, redis_cluster_nodes=seeds)
        client = state.async_client_for(later)
        p = Pipeline(later, client, sink)
        await asyncio.wait_for(process_until_done(p, doc_records(order(990))), 60)
        await p.aclose()
        await client.aclose()
        return sink

    asyncio.run(fresh_worker())
    orders.append(order(990))
    decisions = sink.decisions()
    assert sorted(d["orderNo"] for d in decisions) == sorted(o.order_no for o in orders)  # each once
    assert {d["status"] for d in decisions} == {800}
    # A gate that starts now finds the cluster through REDIS_CLUSTER_NODES too;
    # without them it cannot.
    with pytest.raises(redis_exceptions.RedisClusterException):
        _gate_on(cluster)
    gate = _gate_on(cluster, seeds)
    events = [orjson.loads(v) for _k, v in sink.on(registry.RELEASE)]
    assert len(events) == len(orders)
    assert gate.record(events) == len(orders) and gate.record(events) == 0


def test_cluster_nodes_are_read_as_addresses():
    assert state.cluster_seeds(" a:7000, [::1]:7001,,10.0.0.3:7002 ") == [("a", 7000), ("::1", 7001),
                                                                          ("10.0.0.3", 7002)]
    for bad in ("a", "a:", ":7000", "a:port"):
        with pytest.raises(ValueError, match="REDIS_CLUSTER_NODES"):
            state.cluster_seeds(bad)


def test_cluster_clients_give_up_on_a_node_after_the_socket_timeout(redis_cluster):
    """As a single Redis's: a node frozen or cut off without a reset fails the
    call within the time limit instead of hanging it."""
    sync = state.sync_client(redis_cluster.url, cluster=True)
    try:
        for node in sync.get_nodes():
            kwargs = node.redis_connection.connection_pool.connection_kwargs
            assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == state.SOCKET_TIMEOUT_S
    finally:
        sync.close()

    async def nodes() -> list[dict]:
        client = state.async_client(redis_cluster.url, cluster=True)
        await client.initialize()
        try:
            return [node.connection_kwargs for node in client.get_nodes()]
        finally:
            await client.aclose()

    for kwargs in asyncio.run(nodes()):
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == state.SOCKET_TIMEOUT_S
