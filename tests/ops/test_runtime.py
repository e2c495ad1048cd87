"""A web process freezes its start-up objects once its code is loaded (ops.runtime)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import gc, sys
before = gc.get_freeze_count()
import pscsync.wsgi
print(before, gc.get_freeze_count(), "dashboards.views" in sys.modules, "connectors.webhooks" in sys.modules)
"""


def test_loading_the_wsgi_application_loads_the_views_and_freezes_what_start_up_built() -> None:
    # In a fresh interpreter, as a gunicorn worker imports it: nothing frozen before, the views
    # loaded (not on the first request) and tens of thousands of objects frozen after.
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    before, after, views, webhooks = out.stdout.split()[-4:]
    assert int(before) == 0
    assert int(after) > 20_000
    assert (views, webhooks) == ("True", "True")
