"""gunicorn's settings, read from the working directory by every `gunicorn pscsync.wsgi` we start
(Procfile, Dockerfile, `make demo`, bench/ingest); command-line flags still win.

Preloading: the master imports the application once (pscsync/wsgi.py: Django, the URL
configuration, every view, then the start-up objects frozen out of the garbage collector's way)
and forks the workers from it, so they share those pages instead of each building its own copy.
Measured with 4 sync workers after 80 requests of the sign-in page and /readyz: PSS of the master
and workers 372 MiB without, 187 MiB with (docs/benchmarks.md, issue 18's web + worker memory).

The master must hold no connection a worker would inherit: nothing at import opens one (Django
connects lazily; the Redis clients are made on first use), and pre_fork closes any database
connection the master may have opened anyway, before the fork, never after it in a child (closing
there would end the master's session on the shared socket). The OpenTelemetry batch exporter
starts its thread again in each child by itself (os.register_at_fork).
"""

from __future__ import annotations

import sys
from typing import Any

preload_app = True


def pre_fork(server: Any, worker: Any) -> None:
    if "pscsync.wsgi" not in sys.modules:  # started with --no-preload: the master holds nothing of ours
        return
    from django.db import connections

    connections.close_all()
