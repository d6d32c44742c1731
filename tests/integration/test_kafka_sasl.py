"""A deployment on a Kafka cluster that authenticates clients by user name
and password (SASL, as MSK, Confluent Cloud or a Strimzi SCRAM listener
does): the embedded broker behind a SASL front that takes PLAIN and
SCRAM-SHA-256/512 and refuses any other request before authentication. The
worker (aiokafka), the publisher, the topic set-up and the readers
(librdkafka) all authenticate with the settings' user and the password from
a file."""
from __future__ import annotations

import dataclasses

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams import embedded
from tests.conftest import FIXTURES
from tests.integration.fronted import FrontedServices, assert_decides_and_releases
from tests.integration.sasl_front import SaslFront
from tests.integration.tls_front import TlsFront
from tests.integration.worker import Env
from topics import registry

pytestmark = pytest.mark.integration
USER, PASSWORD = "clearance-worker", "a long SCRAM password"
TLS = FIXTURES / "tls"


@pytest.fixture(scope="module")
def sasl_env(services, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sasl-broker")
    password = workdir / "kafka-password"
    password.write_text(PASSWORD + "\n")
    svc = FrontedServices(services.redis_url, str(workdir),
                          lambda upstream, port: SaslFront(upstream, port, {USER: PASSWORD}))
    env = Env(svc, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
              KAFKA_SASL_USERNAME=USER, KAFKA_SASL_PASSWORD_FILE=str(password), CLEARANCE_MATCH_TIMEOUT_S="4")
    yield env, svc
    env.stop()
    svc.stop()


def test_a_worker_on_a_scram_cluster_decides_and_releases(sasl_env):
    env, svc = sasl_env
    assert_decides_and_releases(env, "json", "SASL", 33)
    # Every connection authenticated, as the worker's user, by SCRAM-SHA-512.
    assert svc.front.authenticated and set(svc.front.authenticated) == {("SCRAM-SHA-512", USER)}
    assert svc.front.refused == []


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_the_other_mechanisms_authenticate_and_a_wrong_password_is_refused(sasl_env, mechanism):
    env, svc = sasl_env
    settings = dataclasses.replace(env.settings, kafka_sasl_mechanism=mechanism)
    assert env.topic(registry.DECISIONS) in AdminClient(settings.librdkafka_config()).list_topics(timeout=10).topics
    assert (mechanism, USER) in svc.front.authenticated
    wrong = dataclasses.replace(settings, kafka_sasl_password="not the password")
    with pytest.raises(KafkaException):
        AdminClient(wrong.librdkafka_config()).list_topics(timeout=5)
    assert f"wrong password for {USER!r}" in svc.front.refused


class _SaslOverTls:
    """SASL_SSL: TLS (the server's certificate only) in front of the SASL front."""

    def __init__(self, upstream: int, port: int):
        self.sasl = SaslFront(upstream, embedded.free_port(), {USER: PASSWORD})
        self.tls = TlsFront(self.sasl.port, str(TLS / "broker.pem"), str(TLS / "broker.key"), None, port)
        self.authenticated, self.refused = self.sasl.authenticated, self.sasl.refused

    def stop(self) -> None:
        self.tls.stop()
        self.sasl.stop()


def test_a_worker_on_a_sasl_ssl_cluster_decides_and_releases(services, tmp_path):
    svc = FrontedServices(services.redis_url, str(tmp_path), _SaslOverTls)
    env = Env(svc, KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
              KAFKA_SASL_USERNAME=USER, KAFKA_SASL_PASSWORD=PASSWORD, KAFKA_SSL_CAFILE=str(TLS / "ca.pem"),
              CLEARANCE_MATCH_TIMEOUT_S="4")
    try:
        assert_decides_and_releases(env, "xml", "SSLSASL", 34)
        assert svc.front.authenticated and set(svc.front.authenticated) == {("SCRAM-SHA-256", USER)}
        # Without the zone's CA the broker's certificate is not trusted: nothing connects.
        untrusting = dict(env.settings.librdkafka_config())
        untrusting["ssl.ca.location"] = str(TLS / "other-ca.pem")
        with pytest.raises(KafkaException):
            AdminClient(untrusting).list_topics(timeout=5)
    finally:
        env.stop()
        svc.stop()
