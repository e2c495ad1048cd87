"""mypy with django-stubs over the files listed in mypy.ini (the ratchet: a file joins the list
once it is clean, and never leaves it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.ci_step
def test_mypy_passes_on_the_checked_files() -> None:
    pytest.importorskip("mypy_django_plugin", reason="requirements-dev.txt installs mypy and django-stubs")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
