"""The gate service's loop heartbeat and the Redis clients' time limits (pure, no services)."""
from __future__ import annotations

from streams import state
from streams.gate import Heartbeat


def test_health_is_ok_until_the_loop_has_not_turned_for_longer_than_the_stall_limit():
    now = [0.0]
    beat = Heartbeat(stall_s=30.0, clock=lambda: now[0])
    now[0] = 30.0
    assert beat.health(4) == {"status": "ok", "assigned": 4, "loopAgeSeconds": 30.0}
    now[0] = 30.05
    assert beat.health(4)["status"] == "stalled"
    beat.beat()
    now[0] = 31.0
    assert beat.health(0) == {"status": "ok", "assigned": 0, "loopAgeSeconds": 0.9}


def test_every_redis_client_has_a_socket_timeout_that_redis_url_may_override():
    for client in (state.sync_client("redis://127.0.0.1:1/0"), state.async_client("redis://127.0.0.1:1/0")):
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == state.SOCKET_TIMEOUT_S
    kwargs = state.sync_client("redis://127.0.0.1:1/0?socket_timeout=12").connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 12 and kwargs["socket_connect_timeout"] == state.SOCKET_TIMEOUT_S
