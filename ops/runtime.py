"""Process start-up: what a long-lived web or worker process does once its code is loaded."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def startup_objects_freeze() -> int:
    """Move every object alive now (modules, classes, settings, URL patterns, the ORM's models)
    into the collector's permanent generation, so the cyclic garbage collector stops walking them
    on every full collection. They live as long as the process anyway. Measured on a webhook
    request in process: 0.36 ms of collector time per request before, 0.06 ms after
    (docs/benchmarks.md). Garbage made later is still collected. Returns how many were frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("froze %d start-up objects", frozen)
    return frozen
