"""SASL_SSL: SCRAM inside TLS, as MSK's and Confluent Cloud's listeners are:
the embedded broker behind a SASL front behind a TLS front that shows the
broker's certificate. A module of its own: a worker of another test still
running on the same Redis would sweep this one's match timeouts (Redis state
is not namespaced by CLEARANCE_TOPIC_PREFIX; docs/operations.md)."""
from __future__ import annotations

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams import embedded
from tests.conftest import FIXTURES
from tests.integration.fronted import FrontedServices, assert_decides_and_releases
from tests.integration.sasl_front import SaslFront
from tests.integration.tls_front import TlsFront
from tests.integration.worker import Env

pytestmark = pytest.mark.integration
USER, PASSWORD = "clearance-worker", "a long SCRAM password"
TLS = FIXTURES / "tls"


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
