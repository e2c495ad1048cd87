from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pscsync.settings")
application = get_wsgi_application()

# Load the URL configuration (and with it every view module) now rather than on the first
# request, then take what start-up built out of the garbage collector's way (ops.runtime).
from django.urls import get_resolver  # noqa: E402

from ops.runtime import startup_objects_freeze  # noqa: E402

get_resolver().url_patterns  # noqa: B018 (imported for its side effect: the views load)
startup_objects_freeze()
