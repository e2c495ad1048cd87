"""OpenAPI generation: the token scheme, and the error answers every operation can give."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ErrorSerializer(serializers.Serializer):
    status = serializers.IntegerField()
    code = serializers.CharField()
    detail = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()))


_ERRORS_READ = {
    "401": "Missing, invalid, expired or revoked credentials.",
    "403": "The role may not do this.",
    "404": "No such record in the caller's legal entities.",
    "429": "Too many requests for this token.",
}
_ERRORS_WRITE = {
    "400": "The request body is invalid; see errors.",
    "409": "The record's state does not allow this.",
    "422": "Well-formed but refused by the domain rules; see errors.",
    "415": "Send application/json.",
}
_ERRORS_LIST = {"400": "A filter or cursor is invalid."}


class ApiAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        extra = dict(_ERRORS_READ)
        extra.update(_ERRORS_LIST if self.method == "GET" else {})
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            extra.update(_ERRORS_WRITE)
        elif getattr(self.view, "refuses_well_formed_queries", False):
            extra["422"] = "Well-formed parameters that the domain refuses (e.g. a period too long); see errors."
        if "{" not in self.path and self.method in ("GET",) and not self._is_list_view():
            extra.pop("404", None)
        for code, description in extra.items():
            if code not in responses:
                body = self._get_response_for_code(ErrorSerializer, code, direction=direction)
                body["description"] = description
                responses[code] = body
        return responses


class ApiTokenScheme(OpenApiAuthenticationExtension):
    target_class = "api.auth.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A personal API token (psc_…) created under API tokens in the user menu.",
        }


class SessionScheme(OpenApiAuthenticationExtension):
    target_class = "api.auth.SessionAuthentication"
    name = "session"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}


def closed_request_bodies(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """Postprocessing hook: request bodies accept only their declared fields (InputSerializer
    refuses others), so say so in the schema."""
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("Request") and component.get("type") == "object" and "properties" in component:
            component["additionalProperties"] = False
    return result
