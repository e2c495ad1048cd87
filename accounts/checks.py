"""Deploy checks for what Django's own --deploy checks do not know about."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
def check_security_settings(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    found = []
    missing = {"admin", "operator"} - set(settings.TWO_FACTOR_REQUIRED_ROLES)
    if missing:
        found.append(
            Warning(
                f"Two-factor sign-in is not required for: {', '.join(sorted(missing))}.",
                hint="Set PSCSYNC_2FA_REQUIRED_ROLES to include admin and operator (the default).",
                id="accounts.W001",
            )
        )
    if settings.ALLOW_SANDBOXES:
        found.append(
            Warning(
                "Connections marked sandbox may call loopback addresses.",
                hint="Set PSCSYNC_ALLOW_SANDBOXES=false in production.",
                id="accounts.W002",
            )
        )
    if settings.FAULTS_ALLOWED:
        found.append(Warning("Fault injection is allowed.", hint="Unset PSCSYNC_ALLOW_FAULTS.", id="accounts.W003"))
    if not settings.AUDIT_KEYS:
        found.append(
            Warning(
                "The audit chain's key is derived from SECRET_KEY.",
                hint="Set PSCSYNC_AUDIT_KEYS (python -m pscsync.crypto prints a key); rotating SECRET_KEY "
                "would otherwise leave older audit entries unverifiable.",
                id="accounts.W004",
            )
        )
    return found
