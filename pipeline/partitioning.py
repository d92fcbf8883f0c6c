"""Which partition owns an account: Kafka's default (murmur2) partitioner on the UTF-8 account id.

Producers that key messages by ``account_id`` with the Java/kafka-python/aiokafka default partitioner put
every event of an account on its owning partition; the worker re-keys events that arrive elsewhere.

Compiled with the hot path (:mod:`pipeline.compiled`): the worker asks for the partition of every
responder it has not seen lately, and aiokafka's pure-Python murmur2 took ~3 % of a draining worker's
main thread (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

_SEED: Final = 0x9747B28C
_M: Final = 0x5BD1E995  # murmur2's mixing constant
_MASK: Final = 0xFFFFFFFF
_M_LOW: Final = _M & 0xFFFF
_M_HIGH: Final = _M >> 16


def _times_m(x: int) -> int:
    """``x * _M`` modulo 2**32, for ``0 <= x < 2**32``, from 16-bit halves: the compiled build multiplies
    two ints in machine words only while each is under 2**30 (else it goes through Python's long
    integers, which made this no faster than aiokafka's pure-Python murmur2)."""
    low = x & 0xFFFF
    return (low * _M_LOW + ((((x >> 16) * _M_LOW + low * _M_HIGH) & 0xFFFF) << 16)) & _MASK


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned
    32-bit int: the same value as aiokafka's and kafka-python's ``murmur2``."""
    length = len(data)
    h = _SEED ^ length
    end = length & ~3
    for i in range(0, end, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = _times_m(k)
        k ^= k >> 24
        h = _times_m(h) ^ _times_m(k)
    extra = length & 3
    if extra >= 3:
        h ^= data[end + 2] << 16
    if extra >= 2:
        h ^= data[end + 1] << 8
    if extra >= 1:
        h = _times_m(h ^ data[end])
    h ^= h >> 13
    h = _times_m(h)
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a message keyed ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def account_partitioner(partitions: int, cache_size: int = 1 << 18) -> Callable[[str], int]:
    """A cached ``account_id -> partition`` function for ``partitions`` partitions: a dict of up to
    ``cache_size`` accounts, emptied when full. Compiled, a hit is one dict read; ``functools.lru_cache``,
    used before, also reorders its list on every hit (280 instructions per event more over
    ``BatchProcessor.process``, bench/RESULTS.md). Safe to share between threads (each call holds the GIL)."""
    return AccountOwners(partitions, cache_size)


class AccountOwners:
    """:func:`account_partitioner`'s function (a class: compiled, its cache is a typed attribute, and
    compiled callers that know the class call :meth:`partition_of` directly, without Python's call
    protocol)."""

    def __init__(self, partitions: int, cache_size: int) -> None:
        self.partitions = partitions
        self.cache_size = cache_size
        self.cache: dict[str, int] = {}

    def __call__(self, account_id: str) -> int:
        return self.partition_of(account_id)

    def partition_of(self, account_id: str) -> int:
        """The partition that owns ``account_id``. Never blocks; raises only ``UnicodeEncodeError`` for an id
        holding a lone surrogate (which no decoded event holds: both JSON decoders refuse one)."""
        cache = self.cache
        partition = cache.get(account_id)
        if partition is None:
            if len(cache) >= self.cache_size:
                cache.clear()
            partition = cache[account_id] = partition_for(account_id.encode("utf-8"), self.partitions)
        return partition
