"""Sign-in (throttled), the second factor (set up, verify), and the admin's users and sessions page."""

from __future__ import annotations

import logging
from typing import Any, cast

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST
from django_otp import login as otp_login
from django_otp import match_token

from accounts import throttle
from accounts.clientip import client_ip
from accounts.forms import IdentityGroupRuleForm, UserAdminForm
from accounts.models import IdentityGroupRule
from accounts.sessions import open_sessions, sessions_end
from accounts.twofactor import (
    pending_device,
    qr_svg,
    recovery_codes_left,
    recovery_codes_new,
    second_factor_required,
    second_factor_reset,
    secret_text,
    signed_in_with_second_factor,
    user_has_totp,
)
from pscsync.access import MANAGE_USERS, entity_ids_for, permission_required, role_of, users_in_scope
from pscsync.audit import audit_append, audit_record
from pscsync.models import AccessProfile, LegalEntity
from pscsync.request_types import SignedInRequest
from pscsync.services import UserChangeRefused, user_admin_save

security_log = logging.getLogger("pscsync.security")


def _audit_attempt(request: HttpRequest, username: str, action: str, comment: str = "") -> None:
    """Sign-in attempts are audited even when no account matches (no object to point at), through
    the one chained writer, so they reach the external log and keep the chain whole."""
    audit_append(
        actor=None,
        actor_label=username[:150] or "(blank)",
        action=action,
        object_type="auth.user",
        comment=comment,
        remote_addr=client_ip(request) or None,
    )


class SignInView(auth_views.LoginView):
    """Django's login view behind the throttle. Unknown and known accounts get the same answer."""

    redirect_authenticated_user = True

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        from django.conf import settings

        context = super().get_context_data(**kwargs)
        context["sso_enabled"] = settings.OIDC_ENABLED
        context["sso_name"] = settings.OIDC_PROVIDER_NAME
        context["sso_failed"] = self.request.GET.get("sso") == "failed"
        context["local_passwords"] = settings.LOCAL_PASSWORDS or not settings.OIDC_ENABLED
        return context

    def _keys(self) -> list[str]:
        username = self.request.POST.get("username", "")[:150]
        return throttle.sign_in_keys(self.request, username, client_ip(self.request))

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        verdict = throttle.check(self._keys())
        if not verdict.allowed:
            username = request.POST.get("username", "")[:150]
            security_log.warning(
                "sign-in throttled user=%r ip=%s wait=%ss", username, client_ip(request), verdict.retry_after
            )
            _audit_attempt(request, username, "login.throttled", f"wait {verdict.retry_after} s")
            context = self.get_context_data(form=self.form_class(request), throttled_seconds=verdict.retry_after)
            response = self.render_to_response(context, status=429)
            response["Retry-After"] = str(verdict.retry_after)
            return response
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        username = self.request.POST.get("username", "")[:150]
        throttle.failed(self._keys())
        security_log.warning("sign-in failed user=%r ip=%s", username, client_ip(self.request))
        _audit_attempt(self.request, username, "login.failed")
        return super().form_invalid(form)

    def form_valid(self, form: Any) -> HttpResponse:
        throttle.succeeded([key for key in self._keys() if not key.startswith("ip:")])
        response = super().form_valid(form)
        user = form.get_user()
        throttle.set_device_cookie(response, user.get_username())
        security_log.info("sign-in user=%r ip=%s", user.get_username(), client_ip(self.request))
        audit_record(actor=user, action="login.succeeded", obj=user, remote_addr=client_ip(self.request) or None)
        return response


class PasswordChangeView(auth_views.PasswordChangeView):
    """Self-service password change: the old password, then the new one twice, through every
    validator (settings.AUTH_PASSWORD_VALIDATORS). The session stays; others end (Django rotates
    the session hash), and the change is audited."""

    template_name = "accounts/password_change.html"

    def get_success_url(self) -> str:
        return reverse("home")

    def form_valid(self, form: Any) -> HttpResponse:
        with transaction.atomic():
            response = super().form_valid(form)
            user = cast(User, self.request.user)  # the view is login_required
            audit_record(
                actor=user,
                action="user.password_changed",
                obj=user,
                remote_addr=client_ip(self.request) or None,
            )
        messages.success(self.request, "Your password is changed. Other browsers signed in as you are signed out.")
        return response


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return target
    return reverse("home")


@login_required
@require_http_methods(["GET", "POST"])
def two_factor_setup(request: SignedInRequest) -> HttpResponse:
    """Enrol an authenticator app. Once enrolled, the page shows the status instead; a new app or
    lost phone goes through an admin's reset (who also ends the sessions)."""
    user = request.user
    if user_has_totp(user):
        enrolled = {"enrolled": True, "codes_left": recovery_codes_left(user)}
        return render(request, "accounts/two_factor_setup.html", enrolled)
    device = pending_device(user)
    error = ""
    if request.method == "POST":
        token = request.POST.get("token", "").replace(" ", "")
        if device.verify_token(token):
            with transaction.atomic():
                device.confirmed = True
                device.save()
                codes = recovery_codes_new(user)
                audit_record(actor=user, action="2fa.enrolled", obj=user, remote_addr=client_ip(request) or None)
            otp_login(request, device)
            return render(request, "accounts/recovery_codes.html", {"codes": codes, "next": _next_url(request)})
        error = "That code did not match. Check the phone's time and try the newest code."
    context: dict[str, Any] = {
        "enrolled": False,
        "qr": qr_svg(device),
        "secret": secret_text(device),
        "error": error,
        "required": second_factor_required(user),
        "next": _next_url(request),
    }
    return render(request, "accounts/two_factor_setup.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def two_factor_verify(request: SignedInRequest) -> HttpResponse:
    user = request.user
    if signed_in_with_second_factor(user):
        return HttpResponseRedirect(_next_url(request))
    if not user_has_totp(user):
        return redirect("accounts:two_factor_setup")
    error = ""
    if request.method == "POST":
        token = request.POST.get("token", "").replace(" ", "").strip()
        device = match_token(user, token) if token else None
        if device is not None:
            otp_login(request, device)
            used_recovery = device.__class__.__name__ == "StaticDevice"
            audit_record(
                actor=user,
                action="2fa.verified",
                obj=user,
                comment="recovery code" if used_recovery else "authenticator app",
                remote_addr=client_ip(request) or None,
            )
            if used_recovery:
                messages.warning(
                    request,
                    f"You used a recovery code; {recovery_codes_left(user)} are left. Ask an admin for new ones.",
                )
            return HttpResponseRedirect(_next_url(request))
        security_log.warning("second factor failed user=%r ip=%s", user.get_username(), client_ip(request))
        audit_record(actor=user, action="2fa.failed", obj=user, remote_addr=client_ip(request) or None)
        error = "That code did not work. Try the newest code from the app, or a recovery code."
    return render(request, "accounts/two_factor_verify.html", {"error": error, "next": _next_url(request)})


def _scope_words(user: Any) -> str:
    profile = getattr(user, "access", None)
    if profile is None:
        return "none"
    if profile.all_entities:
        return "all"
    return ", ".join(e.name for e in profile.legal_entities.all()) or "none"


@permission_required(MANAGE_USERS)
def user_list(request: SignedInRequest) -> HttpResponse:
    users = (
        users_in_scope(request.user)
        .order_by("username")
        .select_related("access")
        .prefetch_related("groups", "access__legal_entities")
    )
    rows = [
        {
            "user": u,
            "role": role_of(u) or "no role",
            "entities": _scope_words(u),
            "two_factor": user_has_totp(u),
            "sessions": open_sessions(u),
        }
        for u in users
    ]
    return render(request, "accounts/users.html", {"rows": rows})


def _user_form_page(request: SignedInRequest, target: Any) -> HttpResponse:
    ids = entity_ids_for(request.user)
    entities = LegalEntity.objects.order_by("name") if ids is None else LegalEntity.objects.filter(pk__in=ids)
    initial: dict[str, Any] = {"is_active": True, "role": "viewer"}
    if target is not None:
        profile = AccessProfile.objects.filter(user=target).first()
        initial = {
            "username": target.get_username(),
            "email": target.email,
            "role": role_of(target) or "viewer",
            "all_entities": bool(profile and profile.all_entities),
            "legal_entities": list(profile.legal_entities.all()) if profile else [],
            "is_active": target.is_active,
        }
    form = UserAdminForm(
        request.POST or None,
        initial=initial,
        entities=entities,
        editing=target is not None,
        may_grant_all=ids is None,
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            saved = user_admin_save(
                actor=request.user,
                user=target,
                username=initial.get("username") or data["username"],
                email=data["email"],
                role=data["role"],
                entities=data["legal_entities"],
                all_entities=data.get("all_entities", False),
                is_active=data["is_active"],
                password=data["password"],
            )
        except UserChangeRefused as refusal:
            if refusal.forbidden:
                raise PermissionDenied(refusal.message) from None
            form.add_error(refusal.field if refusal.field in form.fields else None, refusal.message)
        else:
            messages.success(request, f"{saved.get_username()} saved.")
            return redirect("accounts:users")
    return render(request, "accounts/user_form.html", {"form": form, "target": target})


@permission_required(MANAGE_USERS)
@require_http_methods(["GET", "POST"])
def user_create(request: SignedInRequest) -> HttpResponse:
    return _user_form_page(request, None)


@permission_required(MANAGE_USERS)
@require_http_methods(["GET", "POST"])
def user_edit(request: SignedInRequest, pk: int) -> HttpResponse:
    return _user_form_page(request, get_object_or_404(users_in_scope(request.user), pk=pk))


@permission_required(MANAGE_USERS)
@require_POST
def user_sessions_end(request: SignedInRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(users_in_scope(request.user), pk=pk)
    with transaction.atomic():
        count = sessions_end(target, f"ended by {request.user.get_username()}")
        audit_record(
            actor=request.user,
            action="user.sessions_ended",
            obj=target,
            after={"sessions": count},
            remote_addr=client_ip(request) or None,
        )
    messages.success(request, f"Ended {count} session(s) of {target.get_username()}.")
    return redirect("accounts:users")


@permission_required(MANAGE_USERS)
@require_POST
def user_two_factor_reset(request: SignedInRequest, pk: int) -> HttpResponse:
    target = get_object_or_404(users_in_scope(request.user), pk=pk)
    with transaction.atomic():
        second_factor_reset(target)
        count = sessions_end(target, f"second factor reset by {request.user.get_username()}")
        audit_record(
            actor=request.user,
            action="user.2fa_reset",
            obj=target,
            after={"sessions_ended": count},
            remote_addr=client_ip(request) or None,
        )
    messages.success(request, f"{target.get_username()} sets up a new authenticator at the next sign-in.")
    return redirect("accounts:users")


@permission_required(MANAGE_USERS)
@require_http_methods(["GET", "POST"])
def sso_rules(request: SignedInRequest) -> HttpResponse:
    """Which identity-provider groups get which role and legal entities (accounts/oidc.py). Only
    an admin of every entity edits them: a rule can grant any entity."""
    if entity_ids_for(request.user) is not None:
        raise PermissionDenied("Only an admin of every legal entity edits the single sign-on rules.")
    form = IdentityGroupRuleForm(request.POST or None)
    if request.method == "POST" and request.POST.get("delete", "").isdigit():
        rule = get_object_or_404(IdentityGroupRule, pk=int(request.POST["delete"]))
        with transaction.atomic():
            audit_record(actor=request.user, action="sso_rule.delete", obj=rule, before={"rule": str(rule)})
            rule.delete()
        messages.success(request, f"Rule for “{rule.group}” removed; it applies from each person's next sign-in.")
        return redirect("accounts:sso_rules")
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            rule = form.save()
            after = {
                "group": rule.group,
                "role": rule.role,
                "all_entities": rule.all_entities,
                "entities": sorted(rule.legal_entities.values_list("code", flat=True)),
            }
            audit_record(actor=request.user, action="sso_rule.save", obj=rule, after=after)
        messages.success(request, f"Rule for “{rule.group}” saved; it applies from each person's next sign-in.")
        return redirect("accounts:sso_rules")
    rules = IdentityGroupRule.objects.prefetch_related("legal_entities")
    return render(request, "accounts/sso_rules.html", {"form": form, "rules": rules})
