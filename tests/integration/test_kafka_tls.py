"""A deployment on a Kafka cluster that authenticates clients by TLS
certificate (mutual TLS): the embedded broker behind a TLS front that asks
every client for a certificate of the zone's CA. The worker (aiokafka), the
publisher, the topic set-up and the readers (librdkafka) all connect with the
client certificate and its encrypted key, whose password comes from a file."""
from __future__ import annotations

import re

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.tls import expiry
from tests.conftest import FIXTURES
from tests.integration.fronted import FrontedServices, assert_decides_and_releases
from tests.integration.tls_front import TlsFront
from tests.integration.worker import Env
from topics import registry

pytestmark = pytest.mark.integration
TLS = FIXTURES / "tls"


@pytest.fixture(scope="module")
def tls_env(services, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("tls-broker")
    password = workdir / "key-password"
    password.write_text("key-secret\n")
    svc = FrontedServices(services.redis_url, str(workdir), lambda upstream, port: TlsFront(
        upstream, str(TLS / "broker.pem"), str(TLS / "broker.key"), str(TLS / "ca.pem"), port))
    env = Env(svc, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(TLS / "ca.pem"),
              KAFKA_SSL_CERTFILE=str(TLS / "worker.pem"), KAFKA_SSL_KEYFILE=str(TLS / "worker-encrypted.key"),
              KAFKA_SSL_KEY_PASSWORD_FILE=str(password), CLEARANCE_MATCH_TIMEOUT_S="4")
    yield env, svc
    env.stop()
    svc.stop()


def test_a_worker_on_a_mutual_tls_cluster_decides_and_releases(tls_env):
    env, svc = tls_env
    assert_decides_and_releases(env, "xml", "TLS", 31)
    # Every connection came through the front with the worker's certificate.
    assert svc.front.clients and set(svc.front.clients) == {"clearance-worker"}
    # Its expiry is exported, for an alert weeks before it would stop the worker.
    exported = re.search(r'^clearance_tls_certificate_expiry_timestamp_seconds\{certificate="kafka_client"\} (\S+)$',
                         env.metrics(0), re.M)
    assert exported and float(exported.group(1)) == expiry((TLS / "worker.pem").read_text())


@pytest.mark.parametrize("client", ["none", "stranger"])
def test_a_client_without_a_certificate_of_the_zones_ca_is_refused(tls_env, client):
    env, svc = tls_env
    conf = {"bootstrap.servers": svc.bootstrap, "security.protocol": "SSL", "ssl.ca.location": str(TLS / "ca.pem")}
    if client == "stranger":
        conf.update({"ssl.certificate.location": str(TLS / "stranger.pem"),
                     "ssl.key.location": str(TLS / "stranger.key")})
    with pytest.raises(KafkaException):
        AdminClient(conf).list_topics(timeout=5)
    # The same client with the worker's certificate is served: the refusal was the certificate.
    conf.update({"ssl.certificate.location": str(TLS / "worker.pem"), "ssl.key.location": str(TLS / "worker.key")})
    assert env.topic(registry.DECISIONS) in AdminClient(conf).list_topics(timeout=10).topics
