from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import HttpRequest


def security_notice(request: HttpRequest) -> dict[str, Any]:
    """Template context: a warning on every page while two-factor sign-in is not enforced."""
    return {"two_factor_not_enforced": not {"admin", "operator"} <= set(settings.TWO_FACTOR_REQUIRED_ROLES)}
