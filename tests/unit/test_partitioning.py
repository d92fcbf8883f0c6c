"""The partition of an account (pipeline/partitioning.py): Kafka's default partitioner, bit for bit, so the
worker agrees with every producer keying by account id (Java, kafka-python, aiokafka)."""

from __future__ import annotations

import aiokafka.partitioner
import kafka.partitioner.default
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.partitioning import account_partitioner, murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest.testMurmur2: the Java client's own values (signed 32-bit).
JAVA_CASES = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_gives_the_java_clients_values() -> None:
    for data, signed in JAVA_CASES.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


@settings(max_examples=2000)
@given(st.binary(max_size=80))
def test_murmur2_agrees_with_aiokafka_and_kafka_python(data: bytes) -> None:
    expected = aiokafka.partitioner.murmur2(data)
    assert murmur2(data) == expected == kafka.partitioner.default.murmur2(data)


@given(st.text(max_size=40), st.integers(min_value=1, max_value=1000))
def test_an_account_goes_where_the_default_partitioner_puts_its_key(account_id: str, partitions: int) -> None:
    key = account_id.encode("utf-8")
    expected = aiokafka.partitioner.DefaultPartitioner()(key, list(range(partitions)), list(range(partitions)))
    assert partition_for(key, partitions) == expected
    assert account_partitioner(partitions)(account_id) == expected


def test_the_partitioners_cache_is_bounded_and_stays_right_when_emptied() -> None:
    owner = account_partitioner(7, cache_size=3)
    accounts = [f"acct-{i}" for i in range(10)]
    for _ in range(2):  # the second pass reads some from the cache, recomputes the rest
        for account in accounts:
            assert owner(account) == partition_for(account.encode("utf-8"), 7)
            assert len(owner.cache) <= 3  # type: ignore[attr-defined]
