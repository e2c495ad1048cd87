from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from pscsync.access import WORK_EXCEPTIONS, permission_required
from remediation.selectors import exception_groups


@permission_required(WORK_EXCEPTIONS)
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    return render(request, "remediation/inbox.html", {"groups": exception_groups(request.user)})
