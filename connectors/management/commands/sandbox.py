"""Run one vendor simulator as its own process, from Django (call_command). `python manage.py
sandbox ...` itself goes to connectors.sandboxes.main before any settings load (manage.py).

Only this command imports the sandboxes; they keep their own state under var/sandboxes/<name>.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from connectors.sandboxes import SANDBOXES, sandbox_serve


class Command(BaseCommand):
    help = "Run a vendor sandbox (a local simulator of the vendor's API) as its own process."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("name", choices=sorted(SANDBOXES))
        parser.add_argument("--port", type=int, default=None)
        parser.add_argument("--state-dir", type=Path, default=None)
        parser.add_argument("--token", default="sandbox-token", help="echo only: the bearer token it accepts")

    def handle(self, *args: Any, name: str, port: int | None, state_dir: Path | None, token: str, **opts: Any) -> None:
        state = state_dir or Path(settings.VAR_DIR) / "sandboxes" / name
        try:
            sandbox_serve(name=name, port=port, state_dir=state, token=token)
        except ImportError as exc:
            raise CommandError(f"the {name} sandbox is not installed: {exc}") from exc
