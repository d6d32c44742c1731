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

from tests.integration.fronted import FrontedServices, assert_decides_and_releases
from tests.integration.sasl_front import SaslFront
from tests.integration.worker import Env
from topics import registry

pytestmark = pytest.mark.integration
USER, PASSWORD = "clearance-worker", "a long SCRAM password"


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

