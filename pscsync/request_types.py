"""Request types for the type checker: what the middleware has made of a request by the time a
view runs. Never built; views annotate their `request` with them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class HtmxHttpRequest(HttpRequest):
    """A request as django-htmx's middleware leaves it."""

    htmx: HtmxDetails


class SignedInRequest(HtmxHttpRequest):
    """A request behind `login_required` or `permission_required`: its user is signed in, never
    the anonymous one (those decorators redirect it before the view runs)."""

    user: User  # narrower than HttpRequest's User | AnonymousUser
