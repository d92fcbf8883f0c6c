"""The atheris harness run in a subprocess for a while: no input breaks the decoder's properties."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.fuzz
HARNESS = Path(__file__).with_name("fuzz_decode.py")
SECONDS = 15
MIN_RUNS = 10_000  # about 25,000 runs a second on one idle core: a floor for a loaded machine


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed: it has wheels for Linux x86_64 (CPython 3.11-3.13) only",
)
def test_atheris_finds_no_input_that_breaks_the_decoder(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    result = subprocess.run(
        [sys.executable, str(HARNESS), f"-max_total_time={SECONDS}", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        # the source, whose Python atheris instruments for coverage (the compiled modules are C it cannot
        # see: libFuzzer would run blind); the compiled decoder gets the same inputs in test_compiled.py
        env={**os.environ, "ENGAGEMENT_COMPILED": "off"},
    )
    crashes = [p.name for p in tmp_path.glob("crash-*")]
    assert result.returncode == 0 and not crashes, (crashes, result.stderr[-4000:])
    done = re.search(r"^Done (\d+) runs", result.stderr, re.MULTILINE)
    assert done is not None and int(done.group(1)) > MIN_RUNS, result.stderr[-2000:]
    # the fuzzer saw the decoder's branches (it is blind to compiled modules: hence the source above)
    coverage = [int(n) for n in re.findall(r"\bcov: (\d+)", result.stderr)]
    assert coverage and max(coverage) > 50, result.stderr[-2000:]
