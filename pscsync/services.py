"""Set-up services: legal entities, connections and users with their roles and scope."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from connectors.models import Connection
from pscsync.access import ensure_roles, entity_ids_for
from pscsync.audit import audit_record
from pscsync.models import AccessProfile, LegalEntity


def new_webhook_secret() -> str:
    import base64

    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@transaction.atomic
def user_provision(
    *,
    username: str,
    password: str,
    role: str,
    entities: Iterable[LegalEntity] = (),
    all_entities: bool = False,
    actor: AbstractBaseUser | None = None,
) -> AbstractBaseUser:
    """Create or update a user with exactly one role and the given legal-entity scope. The
    password passes the same validators as everywhere else (ValidationError otherwise)."""
    ensure_roles()
    user_model = get_user_model()
    user = user_model.objects.filter(username=username).first() or user_model(username=username)
    validate_password(password, user)
    user.set_password(password)
    user.is_active = True
    user.save()
    user.groups.set([Group.objects.get(name=role)])
    profile, _ = AccessProfile.objects.get_or_create(user=user)
    profile.all_entities = all_entities
    profile.save()
    profile.legal_entities.set(list(entities))
    audit_record(
        actor=actor,
        actor_label="" if actor else "system:setup",
        action="user.provision",
        obj=user,
        after={"role": role, "all_entities": all_entities, "entities": [e.code for e in entities]},
    )
    return user


class ConnectionChangeRefused(Exception):  # noqa: N818 (a refusal, read as a sentence at the call site)
    """A connection change this actor may not make (`forbidden`) or must complete (a field to fill)."""

    def __init__(self, field: str, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.field, self.message, self.forbidden = field, message, forbidden


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: where stored credentials would be sent."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(scheme)


def connection_change_check(
    *,
    actor: AbstractBaseUser | None,
    current: Connection | None,
    base_url: str,
    entities: Iterable[LegalEntity],
    credentials: dict[str, Any] | None,
) -> None:
    """Refuse what would let one admin reach beyond their scope or move secrets to a new host.

    - An admin limited to some legal entities changes only connections whose every entity is in
      their scope, and only to entities in their scope: a connection shared with another entity
      belongs to an admin of both (a UK admin must not repoint or unlink the US's ERP).
    - Changing the scheme, host or port requires the credentials again, for every admin: stored
      credentials are write-only, so they must never follow a new address nobody vouched for
      ("Test connection" would otherwise hand them to whoever listens there).
    """
    if actor is not None and actor.is_authenticated:
        ids = entity_ids_for(actor)
        if ids is not None:
            if current is not None and current.legal_entities.exclude(pk__in=ids).exists():
                raise ConnectionChangeRefused(
                    "legal_entities",
                    "This connection also serves legal entities outside your scope; "
                    "only an admin of every entity it serves may change it.",
                    forbidden=True,
                )
            if any(e.pk not in ids for e in entities):
                raise ConnectionChangeRefused(
                    "legal_entities", "You may link a connection only to legal entities in your scope.", forbidden=True
                )
    if (
        current is not None
        and current.has_credentials
        and credentials is None
        and _origin(current.base_url) != _origin(base_url)
    ):
        raise ConnectionChangeRefused(
            "credentials",
            "The base URL now points at another host, port or scheme: enter the credentials again "
            "(stored credentials are never sent to a new address).",
        )


@transaction.atomic
def connection_save(
    *,
    slug: str,
    name: str,
    kind: str,
    vendor: str,
    base_url: str,
    entities: Iterable[LegalEntity],
    credentials: dict[str, Any] | None = None,
    intake: str = Connection.Intake.WEBHOOK,
    is_sandbox: bool = False,
    api_version: str = "",
    rate_limit_per_minute: int = 600,
    is_active: bool = True,
    actor: AbstractBaseUser | None = None,
) -> Connection:
    """Create or update a connection. Credentials are sealed; the audit trail records that they
    changed, never what they are. Raises ConnectionChangeRefused (connection_change_check)."""
    connection = Connection.objects.filter(slug=slug).first()
    entities = list(entities)
    connection_change_check(
        actor=actor, current=connection, base_url=base_url, entities=entities, credentials=credentials
    )
    before = _connection_snapshot(connection) if connection else {}
    connection = connection or Connection(slug=slug)
    connection.name, connection.kind, connection.vendor = name, kind, vendor
    connection.base_url, connection.intake, connection.is_sandbox = base_url, intake, is_sandbox
    connection.api_version, connection.rate_limit_per_minute = api_version, rate_limit_per_minute
    connection.is_active = is_active
    if credentials is not None:
        connection.set_credentials(credentials)
    connection.save()
    connection.legal_entities.set(list(entities))
    after = _connection_snapshot(connection)
    after["credentials_changed"] = credentials is not None
    audit_record(
        actor=actor,
        actor_label="" if actor else "system:setup",
        action="connection.save",
        obj=connection,
        before=before,
        after=after,
    )
    return connection


def _connection_snapshot(connection: Connection) -> dict[str, Any]:
    return {
        "name": connection.name,
        "kind": connection.kind,
        "vendor": connection.vendor,
        "base_url": connection.base_url,
        "intake": connection.intake,
        "api_version": connection.api_version,
        "rate_limit_per_minute": connection.rate_limit_per_minute,
        "is_sandbox": connection.is_sandbox,
        "is_active": connection.is_active,
        "entities": sorted(connection.legal_entities.values_list("code", flat=True)) if connection.pk else [],
    }
