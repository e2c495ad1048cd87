"""python manage.py sandbox <name> --port N: run one vendor simulator as its own process.

Only this command imports the sandboxes; they keep their own state under var/sandboxes/<name>.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

SANDBOXES = {"echo": 8790}


class Command(BaseCommand):
    help = "Run a vendor sandbox (a local simulator of the vendor's API) as its own process."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", choices=sorted(SANDBOXES))
        parser.add_argument("--port", type=int, default=None)
        parser.add_argument("--token", default="sandbox-token")
        parser.add_argument("--state-dir", type=Path, default=None)

    def handle(self, *args: Any, name: str, port: int | None, token: str, state_dir: Path | None, **opts: Any) -> None:
        state = state_dir or Path(settings.VAR_DIR) / "sandboxes" / name
        if name == "echo":
            from connectors.sandboxes.echo import serve

            serve(port=port or SANDBOXES[name], token=token, state_dir=state)
        else:  # pragma: no cover - every name in SANDBOXES has a branch
            raise CommandError(f"unknown sandbox {name}")
