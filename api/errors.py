"""One error body for every API failure:

    {"status": 404, "code": "not_found", "detail": "Not found.", "errors": {}}

`errors` maps a field name (or "non_field_errors") to its messages on 400 and 422 answers."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class Conflict(exceptions.APIException):
    """The record is not in a state that allows this action (e.g. resubmitting a resolved handoff)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "The record's current state does not allow this."
    default_code = "conflict"


class Unprocessable(exceptions.ValidationError):
    """Well-formed input that the domain refuses (a mapping expression that does not parse)."""

    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "unprocessable"


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, dict):
        return [m for v in detail.values() for m in _flatten(v)]
    if isinstance(detail, list):
        return [m for v in detail for m in _flatten(v)]
    return [str(detail)]


def error_body(status_code: int, code: str, detail: str, errors: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": status_code, "code": code, "detail": detail, "errors": errors or {}}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail
        if isinstance(detail, dict):
            errors = {str(k): _flatten(v) for k, v in detail.items()}
        else:
            errors = {"non_field_errors": _flatten(detail)}
        code = exc.default_code if isinstance(exc, Unprocessable) else "invalid"
        message = "The request is invalid; see errors." if response.status_code == 400 else "; ".join(_flatten(detail))
        response.data = error_body(response.status_code, code, message, errors)
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        response.data = error_body(response.status_code, str(code), str(exc.detail))
    return response


@csrf_exempt
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Unknown paths under /api/ answer in the API's error shape, not with an HTML page."""
    return JsonResponse(error_body(404, "not_found", "No API endpoint at this address."), status=404)
