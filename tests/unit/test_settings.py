"""Settings from the environment: values that would break a deployment are refused at start."""
from __future__ import annotations

import pytest

from config.settings import DEFAULT_DECIDED_TTL_S, MIN_DECIDED_TTL_S, SettingsError, load_settings
from processors.aftercare import RETURN_WINDOW_MS


def test_decided_state_outlives_the_return_window_by_default():
    assert load_settings({}).decided_ttl_s == DEFAULT_DECIDED_TTL_S
    assert MIN_DECIDED_TTL_S * 1000 > RETURN_WINDOW_MS
    assert DEFAULT_DECIDED_TTL_S >= MIN_DECIDED_TTL_S


def test_a_retention_shorter_than_the_return_window_is_refused():
    with pytest.raises(ValueError, match="return"):
        load_settings({"CLEARANCE_DECIDED_TTL_S": str(7 * 24 * 3600)})
    assert load_settings({"CLEARANCE_DECIDED_TTL_S": str(MIN_DECIDED_TTL_S)}).decided_ttl_s == MIN_DECIDED_TTL_S


@pytest.mark.parametrize("node", ["DXP-NODE", "A" * 17, "ＤＸＰ１"])
def test_a_dxp_node_id_must_be_one_to_sixteen_ascii_letters_and_digits(node):
    with pytest.raises(ValueError, match="CLEARANCE_DXP_ID"):
        load_settings({"CLEARANCE_DXP_ID": node})


@pytest.mark.parametrize("namespace", ["yp:prod", "{yp}", "yp*", "-yp", "洋浦", "a" * 33, "yp\n"])
def test_a_redis_namespace_that_would_break_keys_or_scans_is_refused(namespace):
    with pytest.raises(ValueError, match="CLEARANCE_REDIS_NAMESPACE"):
        load_settings({"CLEARANCE_REDIS_NAMESPACE": namespace})


def test_the_redis_namespace_is_clr_unless_configured():
    assert load_settings({}).redis_namespace == "clr"
    for good in ("yangpu", "hn.yp-02_stg", "a" * 32):
        assert load_settings({"CLEARANCE_REDIS_NAMESPACE": good}).redis_namespace == good


def test_on_a_redis_data_loss_workers_continue_unless_told_to_halt():
    assert load_settings({}).redis_loss == "continue"
    assert load_settings({"CLEARANCE_REDIS_LOSS": "halt"}).redis_loss == "halt"
    with pytest.raises(ValueError, match="CLEARANCE_REDIS_LOSS is continue or halt"):
        load_settings({"CLEARANCE_REDIS_LOSS": "stop"})


def test_numbers_are_held_six_months_unless_configured():
    assert load_settings({}).unique_ttl_s == 183 * 24 * 3600
    assert load_settings({"CLEARANCE_UNIQUE_TTL_S": "3600"}).unique_ttl_s == 3600
    for bad in ("0", "-5"):
        with pytest.raises(ValueError, match="CLEARANCE_UNIQUE_TTL_S"):
            load_settings({"CLEARANCE_UNIQUE_TTL_S": bad})


def test_which_numbers_are_held_alone_can_be_chosen():
    assert load_settings({}).unique_kinds == ("waybill", "payment")
    assert load_settings({"CLEARANCE_UNIQUE_KINDS": "waybill"}).unique_kinds == ("waybill",)
    assert load_settings({"CLEARANCE_UNIQUE_KINDS": "none"}).unique_kinds == ()
    with pytest.raises(ValueError, match="CLEARANCE_UNIQUE_KINDS"):
        load_settings({"CLEARANCE_UNIQUE_KINDS": "waybill,orders"})


def test_an_owed_exit_event_is_sent_again_after_thirty_seconds_unless_configured():
    assert load_settings({}).gate_exit_resend_s == 30.0
    assert load_settings({"CLEARANCE_GATE_EXIT_RESEND_S": "0"}).gate_exit_resend_s == 0.0
    for bad in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match="CLEARANCE_GATE_EXIT_RESEND_S"):
            load_settings({"CLEARANCE_GATE_EXIT_RESEND_S": bad})


def test_the_gate_api_listens_on_loopback_and_only_when_given_a_port():
    default = load_settings({})
    assert (default.gate_host, default.gate_port) == ("127.0.0.1", 0)
    chosen = load_settings({"CLEARANCE_GATE_HOST": "0.0.0.0", "CLEARANCE_GATE_PORT": "7070"})
    assert (chosen.gate_host, chosen.gate_port) == ("0.0.0.0", 7070)


def test_the_gate_services_group_is_configurable_per_zone():
    assert load_settings({}).gate_group == "clearance-gate"
    assert load_settings({"CLEARANCE_GATE_GROUP": "yangpu-gates"}).gate_group == "yangpu-gates"


def test_the_gate_api_serves_sixty_four_connections_at_once_unless_configured():
    assert load_settings({}).gate_max_connections == 64
    assert load_settings({"CLEARANCE_GATE_MAX_CONNECTIONS": "8"}).gate_max_connections == 8
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="CLEARANCE_GATE_MAX_CONNECTIONS"):
            load_settings({"CLEARANCE_GATE_MAX_CONNECTIONS": bad})


def test_a_gates_connection_waits_five_seconds_for_its_next_request_unless_configured():
    assert load_settings({}).gate_keepalive_s == 5.0
    assert load_settings({"CLEARANCE_GATE_KEEPALIVE_S": "0"}).gate_keepalive_s == 0.0  # one request per connection
    for bad in ("-1", "nan", "forever"):
        with pytest.raises(ValueError, match="CLEARANCE_GATE_KEEPALIVE_S"):
            load_settings({"CLEARANCE_GATE_KEEPALIVE_S": bad})


@pytest.mark.parametrize("name", ["CLEARANCE_PARTITIONS", "CLEARANCE_MATCH_TIMEOUT_S", "CLEARANCE_DECIDED_TTL_S",
                                  "CLEARANCE_UNIQUE_TTL_S", "CLEARANCE_WEB_PORT", "CLEARANCE_BATCH_WITHIN_S"])
def test_a_number_that_is_not_one_is_refused_naming_its_variable(name):
    with pytest.raises(SettingsError, match=name):
        load_settings({name: "twelve"})


def test_redis_under_sentinel_is_named_by_its_sentinels_and_the_primarys_name(tmp_path):
    password = tmp_path / "sentinel-password"
    password.write_text("s3ntinel\n")
    s = load_settings({"REDIS_URL": "rediss://:data-pass@mymaster/2", "REDIS_SENTINELS": "10.0.0.1:26379, [::1]:26379",
                       "REDIS_SENTINEL_MASTER": "clearance", "REDIS_SENTINEL_PASSWORD_FILE": str(password)})
    assert (s.redis_sentinels, s.redis_sentinel_master, s.redis_sentinel_password) == (
        "10.0.0.1:26379, [::1]:26379", "clearance", "s3ntinel")
    assert not s.embedded_redis and "s3ntinel" not in repr(s)
    assert load_settings({"REDIS_SENTINELS": "10.0.0.1:26379"}).redis_sentinel_master == "mymaster"
    with pytest.raises(SettingsError, match="REDIS_SENTINELS: expected host:port"):
        load_settings({"REDIS_SENTINELS": "10.0.0.1"})
    with pytest.raises(SettingsError, match="REDIS_SENTINELS and REDIS_CLUSTER are both set"):
        load_settings({"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_CLUSTER": "1"})


def test_the_sentinels_are_asked_with_the_data_nodes_time_limits_and_tls():
    from streams import state

    r = state.sync_client("rediss://:data-pass@mymaster/2?ssl_ca_certs=/etc/redis/ca.pem&socket_timeout=3",
                          seeds="10.0.0.1:26379,10.0.0.2:26379", sentinel_master="clearance",
                          sentinel_password="s3ntinel")
    pool = r.connection_pool
    assert pool.service_name == "clearance" and pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "data-pass" and pool.connection_kwargs["socket_timeout"] == 3
    assert "SSL" in pool.connection_class.__name__
    sentinels = pool.sentinel_manager.sentinels
    assert [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
            for s in sentinels] == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    for s in sentinels:
        kw = s.connection_pool.connection_kwargs
        assert kw["ssl_ca_certs"] == "/etc/redis/ca.pem" and kw["socket_timeout"] == 3
        assert kw["password"] == "s3ntinel" and "SSL" in s.connection_pool.connection_class.__name__
