#!/usr/bin/env python
"""Django's command-line utility for pscsync."""

from __future__ import annotations

import os
import sys


def main() -> None:
    if sys.argv[1:2] == ["sandbox"]:
        # A sandbox stands apart from pscsync (reached over HTTP only): it starts without the
        # settings, so it needs no SECRET_KEY, database or credentials key.
        from connectors.sandboxes import main as sandbox_main

        sandbox_main(sys.argv[2:])
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "pscsync.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
