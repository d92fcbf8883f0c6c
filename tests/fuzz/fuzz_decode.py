"""Coverage-guided fuzzing of :func:`pipeline.decode.decode_message` with atheris (libFuzzer).

Every input is checked against :mod:`tests.fuzz.properties`: never raises, every element accounted for,
every event within the contract. The first byte picks the topic and ``max_bytes``; the second, from 128
up, wraps the message in 8 to 1016 levels of arrays (nesting depth is a dimension byte mutations
explore badly: they would have to insert balanced brackets); the rest is the message value.

    python tests/fuzz/fuzz_decode.py -max_total_time=20 [-artifact_prefix=DIR/] [CORPUS_DIR ...]

It starts from seeds (valid events in every form, arrays, edge cases), written into the first corpus
directory if it is empty or into a temporary one if none is given, and without ``-dict=`` uses
``json.dict`` beside this file. It exits 0 when the time is
up; on an input that breaks a property it writes it as ``<artifact_prefix>crash-<sha1>`` and exits
non-zero (77 for a Python exception).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository, for `pipeline` and `tests`

import atheris  # noqa: E402

with atheris.instrument_imports(include=["pipeline"]):
    from pipeline.events import SOURCE_TOPICS
    from tests.fuzz.properties import check_decode

TOPICS: list[str | None] = [None, *SOURCE_TOPICS]
LIMITS = [1024 * 1024, 512, 48]

SEEDS = [
    b'{"event_id":"e1","type":"like","ts":1767225600123,"actor_id":"u1","account_id":"a1","post_id":"p1"}',
    b'{"event_id":"e2","type":"reply","ts":"2026-01-01T01:00:00.123456+01:00","actor_id":"u","account_id":"a",'
    b'"in_reply_to":"e1"}',
    b'{"event_id":"e3","type":"mention","ts":"2026-01-01 00:00:00Z","actor_id":"\xc3\xbc","account_id":"\\u00fc"}',
    b'{"event_id":"s","type":"followers","ts":"2025-12-31T19:30:00.1-04:30","account_id":"a","followers":12}',
    b'[{"event_id":"f","type":"follow","ts":0,"actor_id":"u","account_id":"a"},'
    b'{"event_id":"g","type":"unfollow","ts":253402300799999,"actor_id":"u","account_id":"a"},{},"x",[1],null]',
    b'{"event_id":"e","type":"like","ts":[[[[1]]]],"actor_id":"u","account_id":"a","followers":1.5}',
    b"[]",
]


def test_one_input(data: bytes) -> None:
    head, nesting = (data + b"\0\0")[:2]
    depth = max(0, nesting - 127) * 8
    message = b"[" * depth + data[2:] + b"]" * depth
    check_decode(message, TOPICS[head % len(TOPICS)], LIMITS[head // len(TOPICS) % len(LIMITS)])


def main(argv: list[str]) -> None:
    args = list(argv)
    if not any(a.startswith("-dict=") for a in args[1:]):
        args.append(f"-dict={HERE / 'json.dict'}")
    corpora = [a for a in args[1:] if not a.startswith("-")]
    if not corpora:
        corpora.append(tempfile.mkdtemp(prefix="fuzz-decode-"))
        args.append(corpora[0])
    corpus = Path(corpora[0])
    if corpus.is_dir() and not any(corpus.iterdir()):
        for i, seed in enumerate(SEEDS):
            for topic in range(len(TOPICS)):
                (corpus / f"seed-{i}-{topic}").write_bytes(bytes([topic, 0]) + seed)
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
