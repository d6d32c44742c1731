"""Secrets and Kafka security settings: read from files, checked at start,
and the development personal-data key refused by a worker."""
from __future__ import annotations

import subprocess
import sys

import pytest

from config.settings import DEV_PII_KEY, SettingsError, load_settings, pii_key_problem
from streams import embedded
from streams.auth import SharedToken
from tests.conftest import FIXTURES, ROOT

TLS = FIXTURES / "tls"


def test_a_secret_comes_from_its_variable_or_from_the_file_its_file_variable_names(tmp_path):
    key = tmp_path / "pii"
    key.write_text("k" * 40 + "\n")  # the line break an editor or `echo` leaves is not part of it
    password = tmp_path / "sasl"
    password.write_text("pa ss\r\n")
    url = tmp_path / "redis"
    url.write_text("rediss://:secret@redis.example:6380/0")
    s = load_settings({"CLEARANCE_PII_KEY_FILE": str(key), "REDIS_URL_FILE": str(url),
                       "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "w",
                       "KAFKA_SASL_PASSWORD_FILE": str(password)})
    assert s.pii_key == "k" * 40 and s.kafka_sasl_password == "pa ss"
    assert s.redis_url == "rediss://:secret@redis.example:6380/0" and not s.embedded_redis
    assert load_settings({"CLEARANCE_PII_KEY": "v" * 20}).pii_key == "v" * 20


@pytest.mark.parametrize("name", ["CLEARANCE_PII_KEY", "REDIS_URL", "KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD"])
def test_a_secret_file_that_is_missing_empty_or_doubled_stops_the_start(name, tmp_path):
    with pytest.raises(SettingsError, match=f"{name}_FILE .*No such file"):
        load_settings({f"{name}_FILE": str(tmp_path / "missing")})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SettingsError, match=f"{name}_FILE .* is empty"):
        load_settings({f"{name}_FILE": str(empty)})
    given = tmp_path / "given"
    given.write_text("something-long-enough-1234")
    with pytest.raises(SettingsError, match=f"{name} and {name}_FILE are both set"):
        load_settings({f"{name}_FILE": str(given), name: "other"})


def test_a_secret_never_appears_in_the_message_that_refuses_its_file(tmp_path):
    both = tmp_path / "pii"
    both.write_text("the-secret-value-itself")
    with pytest.raises(SettingsError) as err:
        load_settings({"CLEARANCE_PII_KEY_FILE": str(both), "CLEARANCE_PII_KEY": "another-secret-value"})
    assert "secret-value" not in str(err.value)


@pytest.mark.parametrize("env, message", [
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL is one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "u",
      "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_MECHANISM is one of"),
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u"}, "needs KAFKA_SASL_USERNAME and"),
    ({"KAFKA_SSL_CAFILE": str(TLS / "ca.pem")}, "KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"}, "KAFKA_SSL_CAFILE .*no such"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": str(TLS / "worker.key")}, "go with KAFKA_SSL_CERTFILE"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(TLS / "worker.pem"),
      "KAFKA_SSL_KEYFILE": str(TLS / "broker.key")}, "the key does not belong to the certificate"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(TLS / "worker.pem"),
      "KAFKA_SSL_KEYFILE": str(TLS / "worker-encrypted.key")}, "KAFKA_SSL_KEY_PASSWORD"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": str(TLS / "worker.pem"),
      "KAFKA_SSL_KEYFILE": str(TLS / "worker-encrypted.key"), "KAFKA_SSL_KEY_PASSWORD": "wrong"},
     "KAFKA_SSL_KEY_PASSWORD"),
])
def test_kafka_security_that_cannot_work_stops_the_start_with_a_message(env, message):
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_client_certificate_settings_reach_librdkafka_and_a_mechanism_only_with_sasl():
    s = load_settings({"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_SSL_CAFILE": str(TLS / "ca.pem"),
                       "KAFKA_SSL_CERTFILE": str(TLS / "worker.pem"),
                       "KAFKA_SSL_KEYFILE": str(TLS / "worker-encrypted.key"), "KAFKA_SSL_KEY_PASSWORD": "key-secret",
                       "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"})
    conf = s.librdkafka_config()
    assert conf["security.protocol"] == "SSL" and "sasl.mechanism" not in conf
    assert conf["ssl.ca.location"] == str(TLS / "ca.pem") and conf["ssl.certificate.location"] == str(TLS / "worker.pem")
    assert conf["ssl.key.location"] == str(TLS / "worker-encrypted.key") and conf["ssl.key.password"] == "key-secret"
    sasl = load_settings({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u",
                          "KAFKA_SASL_PASSWORD": "p", "KAFKA_SASL_MECHANISM": "scram-sha-256"}).librdkafka_config()
    assert sasl["sasl.mechanism"] == "SCRAM-SHA-256" and "ssl.certificate.location" not in sasl
    assert load_settings({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u",
                          "KAFKA_SASL_PASSWORD": "p"}).kafka_sasl_mechanism == "PLAIN"


def test_the_worker_consumer_gets_the_client_certificate():
    from streams.app import _credentials

    s = load_settings({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": str(TLS / "ca.pem"),
                       "KAFKA_SSL_CERTFILE": str(TLS / "worker.pem"), "KAFKA_SSL_KEYFILE": str(TLS / "worker.key")})
    ctx = _credentials(s)
    assert ctx.verify_mode.name == "CERT_REQUIRED" and ctx.check_hostname
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "clearance test CA"),),)]


@pytest.mark.parametrize("key, ok", [(DEV_PII_KEY, False), ("short", False), ("é" * 33, False),
                                     ("x" * 16, True), ("0123456789abcdef" * 4, True)])
def test_a_worker_refuses_the_development_key_and_keys_blake2b_cannot_take_whole(key, ok):
    assert (pii_key_problem(key) == "") is ok


def test_the_embedded_services_give_their_processes_a_random_key_unless_one_is_set():
    a, b = embedded.dev_pii_env({}), embedded.dev_pii_env({})
    assert a["CLEARANCE_PII_KEY"] != b["CLEARANCE_PII_KEY"] and not pii_key_problem(a["CLEARANCE_PII_KEY"])
    assert embedded.dev_pii_env({"CLEARANCE_PII_KEY": "mine"}) == {}
    assert embedded.dev_pii_env({"CLEARANCE_PII_KEY_FILE": "/run/secrets/pii"}) == {}


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env})


def test_a_worker_with_the_development_key_does_not_start():
    run = _cli("worker", KAFKA_BOOTSTRAP="127.0.0.1:1", REDIS_URL="redis://127.0.0.1:1/0")
    assert run.returncode == 1 and "CLEARANCE_PII_KEY is not set" in run.stderr and "Traceback" not in run.stderr


def test_a_setting_that_cannot_work_is_said_without_a_traceback():
    run = _cli("topics", KAFKA_BOOTSTRAP="127.0.0.1:1", REDIS_URL="redis://127.0.0.1:1/0",
               KAFKA_SECURITY_PROTOCOL="TLS")
    assert run.returncode == 1 and "clearance topics: KAFKA_SECURITY_PROTOCOL is one of" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_shared_token_comes_from_its_variable_at_each_request_or_from_a_file_read_again(tmp_path):
    env = {"CLEARANCE_METRICS_TOKEN": "t1"}
    token = SharedToken("CLEARANCE_METRICS_TOKEN", env)
    assert token.required and token.accepts("Bearer t1") and not token.accepts("Bearer t2")
    assert not SharedToken("CLEARANCE_METRICS_TOKEN", {}).required

    now, reloads = [0.0], []
    path = tmp_path / "metrics-token"
    path.write_text("old-token\n")
    path.chmod(0o600)
    token = SharedToken("CLEARANCE_METRICS_TOKEN", {"CLEARANCE_METRICS_TOKEN_FILE": str(path)},
                        clock=lambda: now[0], on_reload=reloads.append)
    assert token.accepts("Bearer old-token") and not token.accepts("Bearer new-token") and not token.accepts(None)
    path.write_text("# while the scrapers change over\nold-token\nnew-token\n")
    now[0] = 1.0
    assert token.accepts("Bearer old-token") and token.accepts("Bearer new-token")
    path.write_text("new-token\n")
    now[0] = 2.0
    assert token.accepts("Bearer new-token") and not token.accepts("Bearer old-token")
    path.write_text("\n")  # emptied: refused, the token in force stays (the endpoint does not open)
    now[0] = 3.0
    assert token.accepts("Bearer new-token") and not token.accepts(None) and reloads == [True, True, False]
    path.write_text("two tokens on-one-line\n")
    now[0] = 4.0
    assert token.accepts("Bearer new-token") and reloads[-1] is False


def test_a_shared_token_file_that_does_not_read_at_start_stops_the_start(tmp_path):
    with pytest.raises(ValueError, match="CLEARANCE_HTTP_TOKEN_FILE .*holds no token"):
        empty = tmp_path / "empty"
        empty.write_text("# nothing yet\n")
        SharedToken("CLEARANCE_HTTP_TOKEN", {"CLEARANCE_HTTP_TOKEN_FILE": str(empty)})
    with pytest.raises(ValueError, match="CLEARANCE_HTTP_TOKEN_FILE .*No such file"):
        SharedToken("CLEARANCE_HTTP_TOKEN", {"CLEARANCE_HTTP_TOKEN_FILE": str(tmp_path / "gone")})
    with pytest.raises(ValueError, match="both set"):
        SharedToken("CLEARANCE_HTTP_TOKEN", {"CLEARANCE_HTTP_TOKEN_FILE": str(empty), "CLEARANCE_HTTP_TOKEN": "x"})


def test_no_secret_is_in_the_settings_or_services_repr(tmp_path):
    s = load_settings({"REDIS_URL": "rediss://:redis-pass@r:6380/0", "CLEARANCE_PII_KEY": "pii-key-0123456789",
                       "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "u",
                       "KAFKA_SASL_PASSWORD": "sasl-pass"})
    services = embedded.Services("127.0.0.1:1", "redis://:redis-pass@127.0.0.1:2/0")
    for text in (repr(s), repr(services)):
        assert not any(secret in text for secret in ("redis-pass", "pii-key", "sasl-pass",
                                                     services.pii["CLEARANCE_PII_KEY"]))
