"""How an account's serialized state is laid out as records of the account-state table (and its changelog).

Kafka refuses a record larger than the topic's ``max.message.bytes`` (1 MiB by default), and an account's
state is one record: an account with ~15,000 inbound replies and mentions in a week (kept for matching
responses), or some thousands of events a minute, would pass it, and a worker whose changelog write is
refused exits. So a state larger than :data:`CHUNK_BYTES` is stored as *chunks*, records of at most that
size, plus a small *main* record that names them:

- main record: key = the account id (UTF-8); value = the serialized state (it starts with ``[``), or for a
  chunked state a reference ``{"chunks": [generation, count, length]}``;
- chunk record: key = ``0xFF`` + generation (8 bytes, big-endian) + index (4 bytes) + the account id
  (UTF-8); value = one slice of the serialized state. No UTF-8 text holds the byte 0xFF, so no account's
  key is a chunk's key;
- segment record (a large open window of an account, or its conversations in parts,
  :mod:`pipeline.account_state`): keyed as a chunk with index :data:`SEGMENT_INDEX`; the serialized state
  names their generations. New segment records go in the chunks' phase of a write, the deletions of
  those replaced in the last.

A state rewritten in chunks gets a new generation (keys never reused). :func:`layout` makes one write three
phases: the new chunks, then the main records, then the deletions (tombstones) of the chunks the old main
records named, all of an account's records in its partition; a phase is sent once the one before is
acknowledged. So a write cut short anywhere (or a record batch the producer lost) leaves each account
either its old main record with its old chunks, or its new main record with its new chunks. What a
cut-short write can leave is *orphans*: new chunks no main record names (cut before the main record) or
old chunks not yet deleted (cut after it); :func:`orphans` finds them, to be deleted.

This module only lays records out; :class:`~pipeline.processor.StagedStore` applies it to the table.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import orjson

from pipeline.account_state import unlisted

# A state larger than this is stored in chunks of at most this size: half of Kafka's default record limit.
CHUNK_BYTES = 512 * 1024

CHUNK_PREFIX = b"\xff"
_CHUNK_HEAD = struct.Struct(">QI")  # generation, index
_REFERENCE_START = b"{"


class StateCorrupted(RuntimeError):
    """A main record names a chunk the table does not hold. Never happens with writes laid out by
    :func:`layout` (chunks acknowledged before the record naming them is sent, deletions only after it
    is); it means the changelog was changed by hand. The worker stops rather than resume from a part of
    a state."""


@dataclass(frozen=True, slots=True)
class Chunks:
    """What a chunked state's main record names: its chunks' generation, how many, and the state's length."""

    generation: int
    count: int
    length: int

    def keys(self, account_key: bytes) -> list[bytes]:
        return [chunk_key(self.generation, index, account_key) for index in range(self.count)]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"chunks": [self.generation, self.count, self.length]})


def chunk_key(generation: int, index: int, account_key: bytes) -> bytes:
    return CHUNK_PREFIX + _CHUNK_HEAD.pack(generation, index) + account_key


# A segment record (pipeline.account_state: an account's conversations, in parts) is keyed as a chunk of
# its generation with this index.
SEGMENT_INDEX = 0xFFFFFFFF


def segment_key(generation: int, account_key: bytes) -> bytes:
    return chunk_key(generation, SEGMENT_INDEX, account_key)


def segment_listing(state: bytes) -> frozenset[int]:
    """The generations of the records a serialized state names that are keyed as segments: its window
    records (window entries ``[start, [base, deltas]]``), its conversations' segment records (its 11th
    field) and its journal's (its 12th, ``[base, deltas, conversations_from]``)."""
    fields = orjson.loads(state)
    named = {generation for w in fields[0] if len(w) == 2 for generation in unlisted(w[1])}
    if len(fields) > 10 and fields[10] is not None:
        named.update(fields[10])
    if len(fields) > 11:
        named.update(unlisted(fields[11][:2]))
    return frozenset(named)


def is_chunk_key(key: bytes) -> bool:
    return key[:1] == CHUNK_PREFIX


def parse_chunk_key(key: bytes) -> tuple[int, int, bytes]:
    """``(generation, index, account key)`` of a chunk record's key."""
    generation, index = _CHUNK_HEAD.unpack_from(key, 1)
    return generation, index, key[1 + _CHUNK_HEAD.size :]


def reference(main_value: bytes | None) -> Chunks | None:
    """The chunks a main record's value names; None for a state stored whole (or no record)."""
    if main_value is None or main_value[:1] != _REFERENCE_START:
        return None
    generation, count, length = orjson.loads(bytes(main_value))["chunks"]
    return Chunks(generation, count, length)


class Generations:
    """Generations of chunk and segment records: from the wall clock in nanoseconds, strictly increasing
    in this process, and, for chunks, above the generation being replaced (so a key is never written
    twice, even by another worker whose clock is behind)."""

    def __init__(self, now_ns: Callable[[], int] = time.time_ns) -> None:
        self._now_ns = now_ns
        self._last = 0

    def next(self, above: int = 0) -> int:
        self._last = max(self._now_ns(), self._last + 1, above + 1)
        return self._last


# One record of a write: (key, value or None to delete, partition).
Record = tuple[bytes, bytes | None, int]


def layout(
    states: Iterable[tuple[bytes, bytes, int]],
    stored: Mapping[bytes, bytes],
    generations: Generations,
    chunk_bytes: int = CHUNK_BYTES,
    before: Sequence[Record] = (),
    after: Sequence[Record] = (),
) -> list[list[Record]]:
    """The records that store ``states`` (account key, serialized state, partition) over what the table
    holds now (``stored``: its records), as the phases of the write: new chunks (and ``before``: new
    segment records), main records, deletions of the chunks replaced (and ``after``: of the segment
    records replaced); empty phases left out, most writes are the one phase of main records. Each
    phase must be acknowledged by the broker before the next is sent: a producer that is not idempotent
    may lose a record batch and still store the ones after it."""
    chunks: list[Record] = []
    mains: list[Record] = []
    deletions: list[Record] = []
    for state in states:
        key, value, partition = state
        old_value = stored.get(key)
        if len(value) <= chunk_bytes and (old_value is None or old_value[:1] != _REFERENCE_START):
            mains.append(state)  # the common case: whole before, whole now
            continue
        old = reference(old_value)
        if len(value) > chunk_bytes:
            new = Chunks(generations.next(old.generation if old else 0), -(-len(value) // chunk_bytes), len(value))
            for index, chunk in enumerate(new.keys(key)):
                chunks.append((chunk, value[index * chunk_bytes : (index + 1) * chunk_bytes], partition))
            mains.append((key, new.to_bytes(), partition))
        else:
            mains.append(state)
        if old is not None:
            deletions += [(chunk, None, partition) for chunk in old.keys(key)]
    return [phase for phase in (chunks + list(before), mains, deletions + list(after)) if phase]


def assemble(key: bytes, main_value: bytes, stored: Callable[[bytes], bytes | None]) -> bytes:
    """The serialized state of the account at ``key``, from its main record's value and, if that names
    chunks, the chunks (read with ``stored``). Raises :class:`StateCorrupted` when one is missing."""
    chunks = reference(main_value)
    if chunks is None:
        return main_value
    parts = []
    for index, chunk in enumerate(chunks.keys(key)):
        part = stored(chunk)
        if part is None:
            raise StateCorrupted(
                f"the state of account {key.decode('utf-8', 'replace')!r} names chunk {index} of generation "
                f"{chunks.generation}, which the account-state table does not hold"
            )
        parts.append(part)
    value = b"".join(parts)
    if len(value) != chunks.length:
        raise StateCorrupted(
            f"the chunks of account {key.decode('utf-8', 'replace')!r} hold {len(value)} bytes, not {chunks.length}"
        )
    return value


def orphans(keys: Iterable[bytes], stored: Callable[[bytes], bytes | None]) -> Iterator[bytes]:
    """The chunk and segment keys among ``keys`` that no main record names (left by a write cut short)."""
    listings: dict[bytes, frozenset[int]] = {}
    for key in keys:
        if not is_chunk_key(key):
            continue
        generation, index, account_key = parse_chunk_key(key)
        main = stored(account_key)
        if index == SEGMENT_INDEX:
            listing = listings.get(account_key)
            if listing is None:
                try:
                    listing = segment_listing(assemble(account_key, main, stored)) if main else frozenset()
                except StateCorrupted:  # chunks of the main record missing: nothing is known to be unnamed
                    continue
                listings[account_key] = listing
            if generation not in listing:
                yield key
            continue
        named = reference(main)
        if named is None or named.generation != generation or index >= named.count:
            yield key
