"""Which partition owns an account: Kafka's default (murmur2) partitioner on the UTF-8 account id.

Producers that key messages by ``account_id`` with the Java/kafka-python/aiokafka default partitioner put
every event of an account on its owning partition; the worker re-keys events that arrive elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from aiokafka.partitioner import murmur2


def partition_for(key: bytes, partitions: int) -> int:
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def account_partitioner(partitions: int, cache_size: int = 1 << 18) -> Callable[[str], int]:
    """A cached ``account_id -> partition`` function for ``partitions`` partitions."""

    @lru_cache(maxsize=cache_size)
    def owner(account_id: str) -> int:
        return partition_for(account_id.encode("utf-8"), partitions)

    return owner
