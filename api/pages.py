"""Pages: a user's API tokens (under the user menu), and the admins' alert subscriptions and
delivery log. Secrets (a new token, a new webhook signing secret) are rendered once in the
answer to the POST that made them, never put in a redirect, a message or a log."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from api.alerts import alert_test_send
from api.forms import AlertSubscriptionForm, ApiTokenForm
from api.models import AlertDelivery, AlertSubscription, ApiToken
from api.services import alert_subscription_delete, alert_subscription_save
from api.tokens import api_token_issue, api_token_revoke
from pscsync import clock
from pscsync.access import CONFIGURE, VIEW_HANDOFFS, entity_ids_for, permission_required
from pscsync.models import LegalEntity

# --- API tokens ----------------------------------------------------------------------------


def _tokens_page(request: HttpRequest, form: ApiTokenForm, issued: str = "", status: int = 200) -> HttpResponse:
    tokens = ApiToken.objects.filter(user=request.user).order_by("-created_at")
    context = {"form": form, "tokens": tokens, "issued": issued, "now": clock.now()}
    response = render(request, "api/tokens.html", context, status=status)
    if issued:
        response["Cache-Control"] = "no-store"
    return response


@permission_required(VIEW_HANDOFFS)
@require_http_methods(["GET", "POST"])
def token_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = ApiTokenForm(request.POST)
        if not form.is_valid():
            return _tokens_page(request, form, status=400)
        issued = api_token_issue(user=request.user, name=form.cleaned_data["name"], days=form.cleaned_data["days"])
        return _tokens_page(request, ApiTokenForm(), issued=issued.plaintext, status=201)
    return _tokens_page(request, ApiTokenForm())


@permission_required(VIEW_HANDOFFS)
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        token = api_token_revoke(user=request.user, token_id=pk)
    except ApiToken.DoesNotExist:
        raise Http404 from None
    messages.success(request, f"Token “{token.name}” is revoked; requests with it are refused from now on.")
    return redirect("account:tokens")


# --- Alert subscriptions and deliveries ---------------------------------------------------------


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
    return render(request, "api/alerts.html", {"subscriptions": subs})


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
            actor=request.user, data=data, entities=form.cleaned_data["legal_entities"], subscription=sub
        )
        if secret:
            response = render(request, "api/alert_secret.html", {"subscription": saved, "secret": secret}, status=201)
            response["Cache-Control"] = "no-store"
            return response
        messages.success(request, f"Saved “{saved.name}”.")
        return redirect("alerts:list")
    status = 400 if request.method == "POST" else 200
    return render(request, "api/alert_form.html", {"form": form, "subscription": sub}, status=status)


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
    alert_subscription_delete(actor=request.user, subscription=sub)
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
    return render(request, "api/deliveries.html", context)
