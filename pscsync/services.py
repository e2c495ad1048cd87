"""Set-up services: legal entities, connections and users with their roles and scope."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
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
    actor: User | None = None,
) -> User:
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


class UserChangeRefused(Exception):  # a refusal, read as a sentence at the call site
    """A user change this admin may not make (`forbidden`: outside their scope) or that is wrong."""

    def __init__(self, field: str, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.field, self.message, self.forbidden = field, message, forbidden


@transaction.atomic
def user_admin_save(
    *,
    actor: User,
    user: User | None,
    username: str,
    email: str,
    role: str,
    entities: Iterable[LegalEntity],
    all_entities: bool,
    is_active: bool,
    password: str = "",
) -> User:
    """An admin adds or changes a user: role, legal entities, active; audited before and after.

    An admin limited to some legal entities manages only users inside their scope (see
    access.users_in_scope) and gives only entities of their own, never "all entities". Nobody
    disables themself or changes their own role or scope (the last admin cannot lock everyone
    out). A password, when given, passes every validator; a user added without one cannot sign in
    with a password (single sign-on, or an admin sets one later).
    """
    from pscsync.access import ROLES, role_of, users_in_scope

    entities = list(entities)
    if role not in ROLES:
        raise UserChangeRefused("role", f"Choose one of: {', '.join(ROLES)}.")
    ids = entity_ids_for(actor)
    if ids is not None:
        if user is not None and not users_in_scope(actor).filter(pk=user.pk).exists():
            raise UserChangeRefused("username", "This user is outside your legal entities.", forbidden=True)
        if all_entities or any(e.pk not in ids for e in entities):
            raise UserChangeRefused(
                "legal_entities", "You may give only legal entities you work for yourself.", forbidden=True
            )
    if not all_entities and not entities:
        raise UserChangeRefused("legal_entities", "Choose at least one legal entity, or all of them.")
    user_model = get_user_model()
    if user is None and user_model.objects.filter(username__iexact=username).exists():
        raise UserChangeRefused("username", "Another user already has this name.")
    if user is not None and user.pk == actor.pk:
        before_scope = entity_ids_for(user)
        same_scope = (before_scope is None and all_entities) or (
            before_scope is not None and not all_entities and set(before_scope) == {e.pk for e in entities}
        )
        if not is_active or role != role_of(user) or not same_scope:
            raise UserChangeRefused("role", "You cannot disable yourself or change your own role or scope.")
    before = _user_snapshot(user) if user is not None else {}
    target = user or user_model(username=username)
    target.email = email
    if password:
        try:
            validate_password(password, target)
        except ValidationError as exc:
            raise UserChangeRefused("password", " ".join(exc.messages)) from None
        target.set_password(password)
    elif user is None:
        target.set_unusable_password()
    target.is_active = is_active
    target.save()  # disabling ends every session (accounts.signals)
    target.groups.set([Group.objects.get_or_create(name=role)[0]])
    profile, _ = AccessProfile.objects.get_or_create(user=target)
    profile.all_entities = all_entities
    profile.save()
    profile.legal_entities.set([] if all_entities else entities)
    target._pscsync_entity_ids = False  # type: ignore[attr-defined]  # drop the per-request cache
    after = {**_user_snapshot(target), "password_set": bool(password)}
    audit_record(actor=actor, action="user.save", obj=target, before=before, after=after)
    return target


def _user_snapshot(user: User) -> dict[str, Any]:
    from pscsync.access import role_of

    profile = AccessProfile.objects.filter(user=user).first()
    return {
        "username": user.get_username(),
        "email": user.email,
        "role": role_of(user),
        "is_active": user.is_active,
        "all_entities": bool(profile and profile.all_entities),
        "entities": sorted(profile.legal_entities.values_list("code", flat=True)) if profile else [],
    }


class ConnectionChangeRefused(Exception):  # a refusal, read as a sentence at the call site
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
    actor: User | None,
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


def _default_api_version(vendor: str) -> str:
    """The version a connection left blank is pinned to: its connector's declared default."""
    from connectors.registry import connector_class

    try:
        return connector_class(vendor).default_api_version
    except LookupError:
        return ""


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
    actor: User | None = None,
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
    connection.api_version = api_version.strip() or _default_api_version(vendor)
    connection.rate_limit_per_minute = rate_limit_per_minute
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
