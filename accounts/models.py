"""Sign-in throttling counters and the sessions each user has open."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class LoginThrottle(models.Model):
    """Failed sign-ins for one key ("ip:…" or "account:…"), and until when the key must wait."""

    key = models.CharField(max_length=200, unique=True)
    failures = models.PositiveIntegerField(default=0)
    last_failure_at = models.DateTimeField()
    wait_until = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.key}: {self.failures}"


class UserSession(models.Model):
    """One signed-in session, so an admin can see and end a user's sessions."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    session_key = models.CharField(max_length=40, unique=True)
    created_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_reason = models.CharField(max_length=60, blank=True)

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return f"session of user {self.user_id} from {self.ip}"


class IdentityGroupRule(models.Model):
    """Single sign-on: members of an identity-provider group get this role and these legal
    entities (accounts.oidc). Several matching rules: the strongest role, the union of entities."""

    group = models.CharField(max_length=200, unique=True, help_text="The group's name as the provider sends it.")
    role = models.CharField(max_length=20, choices=[("viewer", "Viewer"), ("operator", "Operator"), ("admin", "Admin")])
    all_entities = models.BooleanField(default=False)
    legal_entities = models.ManyToManyField("pscsync.LegalEntity", blank=True, related_name="+")

    class Meta:
        ordering = ["group"]

    def __str__(self) -> str:
        return f"{self.group} → {self.role}"
