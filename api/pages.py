"""Pages: a user's API tokens (under the user menu). A new token is rendered once in the answer to
the POST that made it, never put in a redirect, a message or a log. (The alert pages are in
alerts/views.py.)"""

from __future__ import annotations

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from api.forms import ApiTokenForm
from api.models import ApiToken
from api.tokens import api_token_issue, api_token_revoke
from pscsync import clock
from pscsync.access import VIEW_HANDOFFS, permission_required

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
