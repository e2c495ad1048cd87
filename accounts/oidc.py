"""Single sign-on with OpenID Connect (mozilla-django-oidc): the provider authenticates; we map
its groups to a role and legal entities by the admin-editable rules (IdentityGroupRule).

- A person is matched by user name (claim PSCSYNC_OIDC_USERNAME_CLAIM, preferred_username), so
  an admin can add them first (Users › Add a user) and they then sign in through the provider.
- While any rule exists, the rules decide at every sign-in: the strongest matching role, the
  union of the matching rules' entities ("all" if one says so). No matching rule: the person's
  role and scope are removed and the sign-in refused; so leaving a group takes effect at the
  next sign-in. Without any rule, SSO only authenticates and roles stay as admins set them.
- The provider's multi-factor sign-in (an `amr` of mfa, otp, hwk, sms or swk in the ID token)
  counts as the second factor; otherwise admins and operators pass our own TOTP step as usual.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from accounts.clientip import client_ip
from accounts.models import IdentityGroupRule
from pscsync.audit import audit_record
from pscsync.models import AccessProfile

IDP_MFA_SESSION_KEY = "pscsync_idp_mfa"
_MFA_METHODS = {"mfa", "otp", "hwk", "sms", "swk", "fpt"}
_RANK = {"viewer": 1, "operator": 2, "admin": 3}


@transaction.atomic
def identity_groups_apply(user: User, groups: list[str]) -> bool:
    """Give `user` the role and entities the rules grant `groups`; False when no rule does
    (their role and scope are then removed). Audited when anything changes."""
    from pscsync.access import role_of

    if not IdentityGroupRule.objects.exists():
        return role_of(user) is not None
    rules = list(IdentityGroupRule.objects.filter(group__in=groups).prefetch_related("legal_entities"))
    profile, _ = AccessProfile.objects.get_or_create(user=user)
    before = {
        "role": role_of(user),
        "all_entities": profile.all_entities,
        "entities": sorted(profile.legal_entities.values_list("code", flat=True)),
    }
    role = max((r.role for r in rules), key=_RANK.__getitem__, default=None)
    all_entities = any(r.all_entities for r in rules)
    entities = {e for r in rules for e in r.legal_entities.all()}
    user.groups.set([Group.objects.get_or_create(name=role)[0]] if role else [])
    profile.all_entities = all_entities
    profile.save()
    profile.legal_entities.set([] if all_entities else entities)
    after = {"role": role, "all_entities": all_entities, "entities": sorted(e.code for e in entities)}
    if after != before:
        audit_record(
            actor=None,
            actor_label="system:sso",
            action="user.sso_mapped",
            obj=user,
            before=before,
            after={**after, "groups": sorted(groups)},
        )
    return role is not None


class GroupMappedOIDCBackend(OIDCAuthenticationBackend):
    def filter_users_by_claims(self, claims: dict[str, Any]) -> Any:
        username = str(claims.get(settings.OIDC_USERNAME_CLAIM, ""))
        if not username:
            return self.UserModel.objects.none()
        return self.UserModel.objects.filter(username__iexact=username)

    def verify_claims(self, claims: dict[str, Any]) -> bool:
        return bool(claims.get(settings.OIDC_USERNAME_CLAIM))

    def create_user(self, claims: dict[str, Any]) -> User | None:
        user = self.UserModel(username=str(claims[settings.OIDC_USERNAME_CLAIM])[:150], email=claims.get("email", ""))
        user.set_unusable_password()  # signs in through the provider only
        with transaction.atomic():
            user.save()
            return self.update_user(user, claims, created=True)

    def update_user(self, user: User, claims: dict[str, Any], created: bool = False) -> Any:
        groups = claims.get(settings.OIDC_GROUPS_CLAIM) or []
        groups = [str(g) for g in groups] if isinstance(groups, list) else [str(groups)]
        if claims.get("email") and claims["email"] != user.email:
            user.email = claims["email"]
            user.save(update_fields=["email"])
        if not identity_groups_apply(user, groups):
            if created:
                user.delete()  # a stranger to every rule leaves no account behind
            return None
        return user

    def get_or_create_user(self, access_token: str, id_token: str, payload: dict[str, Any]) -> Any:
        user = super().get_or_create_user(access_token, id_token, payload)
        amr = payload.get("amr") or []
        if user is not None and _MFA_METHODS & set(amr if isinstance(amr, list) else [amr]):
            self.request.session[IDP_MFA_SESSION_KEY] = user.pk
        return user


class SignInRequestView(OIDCAuthenticationRequestView):
    """Sends the browser to the provider; 404 while single sign-on is not configured."""

    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404
        return super().get(request)


class SignInCallbackView(OIDCAuthenticationCallbackView):
    def get(self, request: HttpRequest) -> HttpResponse:
        if not settings.OIDC_ENABLED:
            raise Http404
        return super().get(request)

    def login_success(self) -> HttpResponse:
        response = super().login_success()
        audit_record(
            actor=self.user,
            action="login.succeeded",
            obj=self.user,
            comment="single sign-on",
            remote_addr=client_ip(self.request) or None,
        )
        return response
