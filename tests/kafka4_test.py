"""The Kafka source against a Kafka 4.x broker (scripts/kafka4/pom.xml; the rest of the suite runs Kafka 3.9).

Kafka 4.0 removed old versions of the protocol's requests (KIP-896), so a client that only spoke those would
fail against it. Debian's librdkafka 2.0.2 negotiates versions the broker still has: this runs the Kafka tests
whose failure would show a protocol gap (consumer group join and offset commits across kill -9, fetching from
8 partitions with a poison message, the end-to-end comparison with tests/reference.py computed per partition,
and a consumer group of three processes sharing the topic with cooperative-sticky rebalances) against a 4.x
broker, and checks that the broker really is 4.x.
"""
from __future__ import annotations

import re

import pytest

from kafka_broker import KAFKA4_CLASSPATH_FILE, KafkaBroker
from kafka_group_test import redis  # noqa: F401  (the fixture)
from kafka_group_test import test_three_processes_share_a_group_and_partitions_move_with_their_state  # noqa: F401
from kafka_source_test import topic  # noqa: F401  (the fixture)
from kafka_source_test import test_kill9_mid_stream_counts_every_message_once_per_partition  # noqa: F401
from kafka_source_test import test_poison_messages_are_dead_lettered_and_the_partition_goes_on  # noqa: F401


@pytest.fixture
def kafka_broker():
    """The imported tests' broker, here Kafka 4.x (this module's fixture replaces kafka_broker.py's)."""
    assert KAFKA4_CLASSPATH_FILE.is_file(), f"{KAFKA4_CLASSPATH_FILE} not found; run scripts/setup.sh"
    broker = KafkaBroker(classpath_file=KAFKA4_CLASSPATH_FILE)
    try:
        broker.start()
        version = re.search(r"Kafka version: (\S+)", broker.log.read_text(errors="replace"))
        assert version and version.group(1).startswith("4."), f"not a Kafka 4 broker: {version and version.group(1)}"
        yield broker
    finally:
        broker.close()
