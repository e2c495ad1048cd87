"""The admins' alert subscriptions and delivery log. A new webhook signing secret is rendered once
in the answer to the POST that made it, never put in a redirect, a message or a log."""

from __future__ import annotations

from typing import cast

from django.contrib import messages
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from alerts.forms import AlertSubscriptionForm
from alerts.models import AlertDelivery, AlertSubscription
from alerts.services import alert_test_send
from alerts.subscriptions import alert_subscription_delete, alert_subscription_save
from pscsync.access import CONFIGURE, entity_ids_for, permission_required
from pscsync.models import LegalEntity


def _entities(request: HttpRequest) -> tuple[QuerySet[LegalEntity], bool]:
    ids = entity_ids_for(request.user)
    if ids is None:
        return LegalEntity.objects.all(), True
    return LegalEntity.objects.filter(pk__in=ids), False


def _subscriptions(request: HttpRequest) -> QuerySet[AlertSubscription]:
    """An admin limited to some entities sees only subscriptions wholly inside them."""
    ids = entity_ids_for(request.user)
    qs = AlertSubscription.objects.prefetch_related("legal_entities")
    if ids is None:
        return qs
    return (
        qs.exclude(all_entities=True)
        .exclude(legal_entities__in=LegalEntity.objects.exclude(pk__in=ids))
        .filter(legal_entities__in=ids)
        .distinct()
    )


@permission_required(CONFIGURE)
@require_GET
def subscription_list(request: HttpRequest) -> HttpResponse:
    subs = _subscriptions(request).order_by("name")
    return render(request, "alerts/list.html", {"subscriptions": subs})


@permission_required(CONFIGURE)
@require_http_methods(["GET", "POST"])
def subscription_edit(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    sub = get_object_or_404(_subscriptions(request), pk=pk) if pk else None
    entities, sees_all = _entities(request)
    form = AlertSubscriptionForm(request.POST or None, instance=sub, entities=entities, sees_all=sees_all)
    if request.method == "POST" and form.is_valid():
        data = {k: v for k, v in form.cleaned_data.items() if k != "legal_entities"}
        data.setdefault("all_entities", False)
        saved, secret = alert_subscription_save(
            actor=cast(User, request.user), data=data, entities=form.cleaned_data["legal_entities"], subscription=sub
        )
        if secret:
            response = render(request, "alerts/secret.html", {"subscription": saved, "secret": secret}, status=201)
            response["Cache-Control"] = "no-store"
            return response
        messages.success(request, f"Saved “{saved.name}”.")
        return redirect("alerts:list")
    status = 400 if request.method == "POST" else 200
    return render(request, "alerts/form.html", {"form": form, "subscription": sub}, status=status)


@permission_required(CONFIGURE)
@require_POST
def subscription_test(request: HttpRequest, pk: int) -> HttpResponse:
    sub = get_object_or_404(_subscriptions(request), pk=pk)
    alert_test_send(sub=sub)
    messages.success(request, f"A test message to “{sub.name}” is queued; see the delivery log.")
    return redirect("alerts:deliveries")


@permission_required(CONFIGURE)
@require_POST
def subscription_delete(request: HttpRequest, pk: int) -> HttpResponse:
    sub = get_object_or_404(_subscriptions(request), pk=pk)
    alert_subscription_delete(actor=cast(User, request.user), subscription=sub)  # CONFIGURE: signed in
    messages.success(request, f"Deleted “{sub.name}”.")
    return redirect("alerts:list")


@permission_required(CONFIGURE)
@require_GET
def delivery_log(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    deliveries = AlertDelivery.objects.filter(subscription__in=_subscriptions(request)).select_related("subscription")
    if status in AlertDelivery.Status.values:
        deliveries = deliveries.filter(status=status)
    context = {
        "deliveries": deliveries.order_by("-created_at")[:200],
        "status": status,
        "statuses": AlertDelivery.Status.choices,
    }
    return render(request, "alerts/deliveries.html", context)
