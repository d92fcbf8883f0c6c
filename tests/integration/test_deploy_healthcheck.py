"""The worker image's HEALTHCHECK command (deploy/docker/Dockerfile, also the Compose worker's check) run
against a real worker: healthy while it runs, unhealthy once it stopped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.settings import Settings
from tests.integration.helpers import running_worker
from tests.unit.test_deploy_docker import healthcheck_command

pytestmark = pytest.mark.integration


def check(settings: Settings) -> int:
    program, flag, code = healthcheck_command()
    assert (program, flag) == ("python", "-c")
    env = {**os.environ, "ENGAGEMENT_WEB_PORT": str(settings.web_port)}
    done = subprocess.run([sys.executable, flag, code], env=env, capture_output=True, timeout=30, check=False)
    return done.returncode


def test_healthy_while_the_worker_runs_and_not_after(live_settings: Settings) -> None:
    assert live_settings.web_host == "127.0.0.1"  # the check probes the loopback, as inside the container
    with running_worker(live_settings):
        assert check(live_settings) == 0
    assert check(live_settings) != 0
