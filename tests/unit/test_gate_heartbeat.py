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


def test_gate_tokens_file_is_read_again_only_when_it_changes_and_a_bad_change_keeps_the_tokens(tmp_path):
    from streams.auth import GateTokens

    now = [0.0]
    reloads: list[bool] = []
    path = tmp_path / "tokens"
    path.write_text("YP-01=a\n")
    tokens = GateTokens("YP-09=fixed", str(path), check_every_s=1.0, clock=lambda: now[0], on_reload=reloads.append)
    assert tokens.required and tokens.tokens() == {"fixed": "YP-09", "a": "YP-01"}
    path.write_text("YP-01=a, YP-01=b\n")
    assert "b" not in tokens.tokens()  # looked at once a second at most
    now[0] = 1.0
    assert tokens.tokens() == {"fixed": "YP-09", "a": "YP-01", "b": "YP-01"}
    path.write_text("YP-01=b\n# YP-02=c\n")
    now[0] = 1.5
    assert "a" in tokens.tokens()  # not looked at again within the second
    now[0] = 2.0
    assert tokens.tokens() == {"fixed": "YP-09", "b": "YP-01"}
    path.write_text("YP-02=fixed\n")  # the fixed list gives that token to YP-09
    now[0] = 3.0
    assert tokens.tokens() == {"fixed": "YP-09", "b": "YP-01"} and reloads == [True, True, False]
    now[0] = 4.5
    tokens.tokens()
    assert reloads == [True, True, False]  # refused once per change, not every second
    path.unlink()
    now[0] = 6.0
    assert tokens.tokens() == {"fixed": "YP-09", "b": "YP-01"} and reloads == [True, True, False, False]
    now[0] = 7.0
    tokens.tokens()
    assert reloads == [True, True, False, False]  # still gone: said once
    path.write_text("")
    now[0] = 8.5
    assert tokens.tokens() == {"fixed": "YP-09"} and tokens.required and reloads[-1] is True
    assert not GateTokens("", "").required
