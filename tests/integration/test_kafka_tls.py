"""A deployment on a Kafka cluster that authenticates clients by TLS
certificate (mutual TLS), and a Redis reached over TLS: the embedded broker
behind a TLS front that asks every client for a certificate of the zone's
CA, the session's Redis behind one that shows the server's certificate. The worker (aiokafka), the
publisher, the topic set-up and the readers (librdkafka) all connect with the
client certificate and its encrypted key, whose password comes from a file."""
from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams import embedded
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
    # Redis over TLS too (rediss://, the server's certificate checked against the zone's CA).
    redis_front = TlsFront(urlsplit(services.redis_url).port or 6379, str(TLS / "broker.pem"),
                           str(TLS / "broker.key"), None, embedded.free_port())
    rediss = f"rediss://127.0.0.1:{redis_front.port}/0?ssl_ca_certs={TLS / 'ca.pem'}"
    svc = FrontedServices(rediss, str(workdir), lambda upstream, port: TlsFront(
        upstream, str(TLS / "broker.pem"), str(TLS / "broker.key"), str(TLS / "ca.pem"), port))
    svc.redis_front = redis_front
    env = Env(svc, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(TLS / "ca.pem"),
              KAFKA_SSL_CERTFILE=str(TLS / "worker.pem"), KAFKA_SSL_KEYFILE=str(TLS / "worker-encrypted.key"),
              KAFKA_SSL_KEY_PASSWORD_FILE=str(password), CLEARANCE_MATCH_TIMEOUT_S="4")
    yield env, svc
    env.stop()
    svc.stop()
    redis_front.stop()


def test_a_worker_on_a_mutual_tls_cluster_decides_and_releases(tls_env):
    env, svc = tls_env
    assert_decides_and_releases(env, "xml", "TLS", 31)
    # Every connection came through the front with the worker's certificate,
    # and the worker's Redis clients through Redis's TLS front.
    assert svc.front.clients and set(svc.front.clients) == {"clearance-worker"}
    assert svc.redis_front.clients
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
