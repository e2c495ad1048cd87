"""The REST API (/api/v1/). Views are thin: scope the queryset, check the role (RolePermission
reads `required_permissions`), validate with an input serializer, call the service, answer with
an output serializer. Business rules live in the services they call."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from django.db.models import Prefetch, QuerySet
from django.http import QueryDict
from django.urls import reverse
from django.utils.http import http_date
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import filters, serializers
from api.errors import Conflict, Unprocessable
from api.selectors import (
    cause_comments,
    cause_handoff_ids,
    cause_row,
    causes_visible_to,
    exception_group_get,
    group_id,
)
from connectors.egress import DestinationRefused, check_destination
from connectors.filters import connections_for
from connectors.models import Connection
from dashboards.facts import MEASURES as FLOW_MEASURES
from dashboards.facts import sla_for
from dashboards.fx import known_currencies
from dashboards.kpis import payload as metrics_payload
from dashboards.metrics import Filters, policy_text, reporting_currency, weekly_latency
from dashboards.queries import connection_activity, health_summary
from dashboards.services import flow_sla_set
from pscsync import clock
from pscsync.access import CONFIGURE, VIEW_DASHBOARDS, VIEW_HANDOFFS, WORK_EXCEPTIONS, entity_ids_for, scope_queryset
from pscsync.filters import page_params
from pscsync.mapping import RuleProblem
from pscsync.mappings import MappingInvalid, mapping_publish
from pscsync.models import (
    AuditEntry,
    Event,
    Handoff,
    LegalEntity,
    Mapping,
    MappingVersion,
    Mismatch,
    ReconciliationRun,
    Step,
)
from pscsync.selectors import handoffs_visible_to
from pscsync.services import ConnectionChangeRefused, connection_save
from remediation import services as remediation
from remediation.models import BulkJob, ExceptionCause, ExceptionStatus, HandoffException, SavedView
from remediation.selectors import FILTERS as INBOX_FILTERS
from remediation.selectors import SORTS as INBOX_SORTS
from remediation.selectors import InboxFilter, InboxGroup, exception_groups, inbox_groups

VIEW_AUDIT = "pscsync.view_auditentry"


def _addr(request: Request) -> str | None:
    return request.META.get("REMOTE_ADDR")


def _refused(exc: Exception) -> Conflict:
    return Conflict(str(exc))


# --- Handoffs and events ----------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List handoffs", tags=["handoffs"]),
    retrieve=extend_schema(summary="A handoff with its steps and attempts", tags=["handoffs"]),
)
class HandoffViewSet(viewsets.ReadOnlyModelViewSet):
    required_permissions = {"read": VIEW_HANDOFFS}
    filterset_class = filters.HandoffFilter

    def get_queryset(self) -> QuerySet[Handoff]:
        qs = handoffs_visible_to(self.request.user)
        if self.action == "retrieve":
            steps = Step.objects.select_related("target_connection").prefetch_related("attempts")
            qs = qs.prefetch_related(Prefetch("steps", queryset=steps))
        return qs

    def get_serializer_class(self) -> type:
        return serializers.HandoffDetailSerializer if self.action == "retrieve" else serializers.HandoffSerializer


@extend_schema_view(
    list=extend_schema(summary="List events (inbound changes)", tags=["events"]),
    retrieve=extend_schema(summary="An event", tags=["events"]),
)
class EventViewSet(viewsets.ReadOnlyModelViewSet):
    required_permissions = {"read": VIEW_HANDOFFS}
    serializer_class = serializers.EventSerializer
    filterset_class = filters.EventFilter

    def get_queryset(self) -> QuerySet[Event]:
        return scope_queryset(Event.objects.select_related("connection", "legal_entity"), self.request.user)


# --- Exceptions, groups, jobs -------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List exceptions (handoffs that need a person)", tags=["exceptions"]),
    retrieve=extend_schema(summary="An exception with its failed step and payload", tags=["exceptions"]),
)
class ExceptionViewSet(viewsets.ReadOnlyModelViewSet):
    required_permissions = {"read": WORK_EXCEPTIONS, "write": WORK_EXCEPTIONS}
    # The workbench's filter set: the list is the handoffs of the exceptions it selects (without a
    # tab, every one that needs a person now).
    filterset_class = filters.ExceptionFilter
    filter_backends = [filters.ExceptionFilterBackend]

    def get_queryset(self) -> QuerySet[Handoff]:
        steps = Step.objects.select_related("target_connection").prefetch_related("attempts")
        qs = (
            handoffs_visible_to(self.request.user)
            .select_related("exception__assignee", "exception__cause")
            .prefetch_related(Prefetch("steps", queryset=steps))
        )
        if self.action == "retrieve":
            qs = qs.filter(status=Handoff.Status.NEEDS_ATTENTION)
        return qs

    def get_serializer_class(self) -> type:
        return serializers.ExceptionDetailSerializer if self.action == "retrieve" else serializers.ExceptionSerializer

    def _do(self, run: Any, **kwargs: Any) -> Any:
        try:
            return run(**kwargs)
        except remediation.ActionRefused as exc:
            raise _refused(exc) from None

    def _body(self, request: Request, body_class: type) -> dict[str, Any]:
        body = body_class(data=request.data)
        body.is_valid(raise_exception=True)
        return body.validated_data

    @extend_schema(
        summary="Resubmit: resume at the failed step (stored, edited or re-mapped input)",
        description="Finished steps are never sent again. Mode `edit` replaces the read step's document "
        "with `document`; `remap` reads the source again and maps with the mapping in force.",
        tags=["exceptions"],
        request=serializers.ResubmitSerializer,
        responses={200: serializers.HandoffSerializer},
    )
    @action(detail=True, methods=["post"])
    def resubmit(self, request: Request, pk: str | None = None) -> Response:
        handoff = self.get_object()
        data = self._body(request, serializers.ResubmitSerializer)
        if data["mode"] == remediation.ResubmitMode.EDIT and "document" not in data:
            raise Unprocessable({"document": ["give the edited document for mode edit"]})
        result = self._do(
            remediation.handoff_resubmit,
            actor=request.user,
            handoff=handoff,
            mode=data["mode"],
            reason=data["reason"],
            edited=data.get("document"),
        )
        return Response(serializers.HandoffSerializer(result).data)

    @extend_schema(
        summary="Resolve without a successful run",
        tags=["exceptions"],
        request=serializers.ReasonSerializer,
        responses={200: serializers.HandoffSerializer},
    )
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, pk: str | None = None) -> Response:
        handoff = self.get_object()
        data = self._body(request, serializers.ReasonSerializer)
        result = self._do(remediation.handoff_resolve, actor=request.user, handoff=handoff, reason=data["reason"])
        return Response(serializers.HandoffSerializer(result).data)

    @extend_schema(
        summary="Cancel: nothing more is sent",
        tags=["exceptions"],
        request=serializers.ReasonSerializer,
        responses={200: serializers.HandoffSerializer},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        handoff = self.get_object()
        data = self._body(request, serializers.ReasonSerializer)
        result = self._do(remediation.handoff_cancel, actor=request.user, handoff=handoff, reason=data["reason"])
        return Response(serializers.HandoffSerializer(result).data)

    @extend_schema(
        summary="Reopen a resolved or cancelled handoff",
        tags=["exceptions"],
        request=serializers.ReasonSerializer,
        responses={200: serializers.HandoffSerializer},
    )
    @action(detail=True, methods=["post"])
    def reopen(self, request: Request, pk: str | None = None) -> Response:
        handoff = self.get_object()
        data = self._body(request, serializers.ReasonSerializer)
        result = self._do(remediation.handoff_reopen, actor=request.user, handoff=handoff, reason=data["reason"])
        return Response(serializers.HandoffSerializer(result).data)

    @extend_schema(
        summary="Assign to a person (or unassign with null)",
        tags=["exceptions"],
        request=serializers.AssignSerializer,
        responses={200: serializers.ExceptionDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def assign(self, request: Request, pk: str | None = None) -> Response:
        handoff = self.get_object()
        data = self._body(request, serializers.AssignSerializer)
        assignee = _assignee(data["assignee"])
        self._do(remediation.handoff_assign, actor=request.user, handoff=handoff, assignee=assignee)
        return Response(serializers.ExceptionDetailSerializer(self.get_object()).data)

    @extend_schema(
        summary="Comment on an exception (shared with its cause group)",
        tags=["exceptions"],
        request=serializers.CommentCreateSerializer,
        responses={201: serializers.CommentSerializer},
    )
    @action(detail=True, methods=["post"])
    def comment(self, request: Request, pk: str | None = None) -> Response:
        handoff = self.get_object()
        data = self._body(request, serializers.CommentCreateSerializer)
        item = getattr(handoff, "exception", None)
        if item is None:
            raise Conflict("This handoff never needed a person: there is nothing to comment on.")
        created = self._do(
            remediation.comment_add, actor=request.user, cause=item.cause, body=data["body"], handoff=handoff
        )
        return Response(serializers.CommentSerializer(created).data, status=status.HTTP_201_CREATED)


def _assignee(username: str | None) -> Any:
    """A user who may work exceptions, by user name; an unknown name is refused as a whole."""
    if username is None:
        return None
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None or not user.has_perm(WORK_EXCEPTIONS):
        raise Unprocessable({"assignee": ["no active user who works exceptions has this name"]})
    return user


def _group_data(group: Any) -> dict[str, Any]:
    return {
        "id": group_id(group.flow, group.error_class, group.signature),
        "flow": group.flow,
        "error_class": group.error_class,
        "signature": group.signature,
        "count": group.count,
        "first_seen": group.first_seen,
        "last_seen": group.last_seen,
        "legal_entities": sorted({h.legal_entity.code for h in group.handoffs if h.legal_entity}),
        "handoffs": [h.pk for h in group.handoffs],
    }


class DeprecatedMixin:
    """Deprecation (RFC 9745) and Sunset (RFC 8594) headers on every answer, and the successor."""

    deprecated_since = dt.datetime(2026, 11, 27, tzinfo=dt.UTC)
    sunset = dt.datetime(2027, 5, 27, tzinfo=dt.UTC)
    successor = "/api/v1/exception-causes/"

    def finalize_response(self, request: Request, response: Response, *args: Any, **kwargs: Any) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        response["Deprecation"] = f"@{int(self.deprecated_since.timestamp())}"
        response["Sunset"] = http_date(self.sunset.timestamp())
        response["Link"] = f'<{self.successor}>; rel="successor-version"'
        return response


class ExceptionGroupListView(DeprecatedMixin, APIView):
    """Exceptions grouped by cause (flow, error class, message with its variable parts blanked).
    Deprecated: these groups are computed on the fly and differ from the workbench's causes."""

    required_permissions = {"read": WORK_EXCEPTIONS}

    @extend_schema(
        operation_id="exception_groups_list",
        summary="List exception groups, largest first (one page: groups are few)",
        description="Deprecated since v1.1.0, sunset 2027-05-27: use /api/v1/exception-causes/.",
        deprecated=True,
        tags=["exceptions"],
        responses={200: serializers.ExceptionGroupPageSerializer},
    )
    def get(self, request: Request) -> Response:
        groups = [_group_data(g) for g in exception_groups(request.user)]
        data = serializers.ExceptionGroupSerializer(groups, many=True).data
        return Response({"next": None, "previous": None, "results": data})


class ExceptionGroupDetailView(DeprecatedMixin, APIView):
    required_permissions = {"read": WORK_EXCEPTIONS}

    @extend_schema(
        summary="An exception group and its handoffs",
        description="Deprecated since v1.1.0, sunset 2027-05-27: use /api/v1/exception-causes/{id}/.",
        deprecated=True,
        tags=["exceptions"],
        responses={200: serializers.ExceptionGroupSerializer},
    )
    def get(self, request: Request, gid: str) -> Response:
        group = exception_group_get(request.user, gid)
        if group is None:
            raise NotFound()
        return Response(serializers.ExceptionGroupSerializer(_group_data(group)).data)


@extend_schema_view(
    list=extend_schema(summary="List your bulk jobs", tags=["jobs"]),
    retrieve=extend_schema(summary="A bulk job: poll it for progress and per-handoff results", tags=["jobs"]),
)
class BulkJobViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Bulk retry, resolve, assign and replay (the workbench's jobs). A job runs in a worker; poll it."""

    required_permissions = {"read": WORK_EXCEPTIONS, "write": WORK_EXCEPTIONS}
    serializer_class = serializers.BulkJobSerializer
    filterset_class = filters.BulkJobFilter

    def get_queryset(self) -> QuerySet[BulkJob]:
        if getattr(self, "swagger_fake_view", False):  # schema generation has no user
            return BulkJob.objects.none()
        return BulkJob.objects.filter(created_by=self.request.user).prefetch_related("items")

    @extend_schema(
        summary="Start a bulk job",
        tags=["jobs"],
        request=serializers.BulkJobCreateSerializer,
        responses={202: serializers.BulkJobSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = serializers.BulkJobCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if sum(1 for name in ("handoffs", "group", "cause") if data.get(name)) != 1:
            raise Unprocessable({"non_field_errors": ["give one of handoffs, cause or group"]})
        ids = list(data.get("handoffs") or [])
        if data.get("group"):
            group = exception_group_get(request.user, data["group"])
            if group is None:
                raise Unprocessable({"group": ["no exception group with this id"]})
            ids = [h.pk for h in group.handoffs]
        if data.get("cause"):
            cause = causes_visible_to(request.user).filter(pk=data["cause"]).first()
            if cause is None:
                raise Unprocessable({"cause": ["no exception cause with this id"]})
            # The cause's handoffs that need a person now, in the caller's entities.
            open_items = scope_queryset(HandoffException.objects.filter(cause=cause), request.user).filter(
                status=ExceptionStatus.OPEN
            )
            ids = list(open_items.values_list("handoff_id", flat=True))
        visible = set(handoffs_visible_to(request.user).filter(pk__in=ids).values_list("pk", flat=True))
        missing = sorted(set(ids) - visible)
        if missing:
            # Same answer for "not yours" and "does not exist": a job never confirms another entity's ids.
            raise Unprocessable({"handoffs": [f"not found: {', '.join(map(str, missing))}"]})
        params: dict[str, Any] = {}
        if data["kind"] == BulkJob.Kind.ASSIGN:
            assignee = _assignee(data.get("assignee"))
            params["assignee"] = assignee.pk if assignee else None
        try:
            job = remediation.bulk_job_create(
                actor=request.user, kind=data["kind"], handoff_ids=ids, reason=data["reason"], params=params
            )
        except remediation.ActionRefused as exc:
            raise Unprocessable({"non_field_errors": [str(exc)]}) from None
        return _job_accepted(request, job)

    @extend_schema(
        summary="Cancel a job: it stops before its next handoff; what was done stays done",
        tags=["jobs"],
        request=serializers.EmptySerializer,
        responses={200: serializers.BulkJobSerializer},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        serializers.EmptySerializer(data=request.data).is_valid(raise_exception=True)
        if job.is_finished:
            raise Conflict(f"This job is {job.get_status_display().lower()}: there is nothing to cancel.")
        remediation.bulk_job_cancel(actor=request.user, job=job)
        return Response(serializers.BulkJobSerializer(self.get_object()).data)


# --- Mappings and connections ---------------------------------------------------------------


def _problems(problems: list[RuleProblem]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for p in problems:
        key = f"rules[{p.rule}].{p.part}" if p.rule else p.part
        errors.setdefault(key, []).append(p.message)
    return errors


def _connections_for(user: Any) -> QuerySet[Connection]:
    return connections_for(user)  # the page's scope too (connectors/filters.py)


@extend_schema_view(
    list=extend_schema(summary="List mappings", tags=["mappings"]),
    retrieve=extend_schema(summary="A mapping with its versions", tags=["mappings"]),
)
class MappingViewSet(viewsets.ReadOnlyModelViewSet):
    required_permissions = {"read": WORK_EXCEPTIONS, "create": CONFIGURE, "publish": CONFIGURE}
    filterset_class = filters.MappingFilter

    def get_queryset(self) -> QuerySet[Mapping]:
        versions = MappingVersion.objects.select_related("created_by").order_by("-number")
        qs = Mapping.objects.select_related("connection").prefetch_related(Prefetch("versions", queryset=versions))
        return scope_queryset(qs, self.request.user, "connection__legal_entities")

    def get_serializer_class(self) -> type:
        return serializers.MappingDetailSerializer if self.action == "retrieve" else serializers.MappingSerializer

    def _publish(
        self, request: Request, data: dict[str, Any], *, connection: Connection, entity: str, direction: str, name: str
    ) -> Response:
        rules = [dict(r) for r in data["rules"]]
        if not rules:
            raise Unprocessable({"rules": ["a mapping needs at least one rule"]})
        try:
            version = mapping_publish(
                connection=connection,
                entity=entity,
                rules=rules,
                value_maps=data["value_maps"],
                comment=data["comment"],
                actor=request.user,
                direction=direction,
                name=name,
            )
        except MappingInvalid as exc:
            raise Unprocessable(_problems(exc.problems)) from None
        mapping = self.get_queryset().get(pk=version.mapping_id)
        return Response(serializers.MappingDetailSerializer(mapping).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Publish the first (or a new) version of a connection's mapping for an entity",
        tags=["mappings"],
        request=serializers.MappingCreateSerializer,
        responses={201: serializers.MappingDetailSerializer},
    )
    def create(self, request: Request) -> Response:
        head = serializers.MappingCreateSerializer(data=request.data)
        head.is_valid(raise_exception=True)
        connection = _connections_for(request.user).filter(slug=head.validated_data["connection"]).first()
        if connection is None:
            raise Unprocessable({"connection": ["no connection with this slug"]})
        return self._publish(
            request,
            head.validated_data,
            connection=connection,
            entity=head.validated_data["entity"],
            direction=head.validated_data["direction"],
            name=head.validated_data["name"],
        )

    @extend_schema(
        summary="Publish a new version; the previous one is retired",
        tags=["mappings"],
        request=serializers.MappingPublishSerializer,
        responses={201: serializers.MappingDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def publish(self, request: Request, pk: str | None = None) -> Response:
        mapping = self.get_object()
        body = serializers.MappingPublishSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return self._publish(
            request,
            body.validated_data,
            connection=mapping.connection,
            entity=mapping.entity,
            direction=mapping.direction,
            name=mapping.name,
        )


@extend_schema_view(
    list=extend_schema(summary="List connections (credentials are never returned)", tags=["connections"]),
    retrieve=extend_schema(summary="A connection", tags=["connections"]),
)
class ConnectionViewSet(mixins.CreateModelMixin, mixins.UpdateModelMixin, viewsets.ReadOnlyModelViewSet):
    required_permissions = {"read": CONFIGURE, "write": CONFIGURE}
    serializer_class = serializers.ConnectionSerializer
    filterset_class = filters.ConnectionFilter
    http_method_names = ["get", "post", "patch", "head", "options"]

    def get_queryset(self) -> QuerySet[Connection]:
        return _connections_for(self.request.user)

    def _save(self, request: Request, data: dict[str, Any], current: Connection | None) -> Connection:
        codes = data.get("legal_entities")
        if codes is None:
            entities = list(current.legal_entities.all()) if current else []
        else:
            ids = entity_ids_for(request.user)
            allowed = LegalEntity.objects.all() if ids is None else LegalEntity.objects.filter(pk__in=ids)
            entities = list(allowed.filter(code__in=codes))
            unknown = sorted(set(codes) - {e.code for e in entities})
            if unknown:
                raise Unprocessable({"legal_entities": [f"unknown legal entity: {', '.join(unknown)}"]})
        merged = {
            f: data.get(f, getattr(current, f, None))
            for f in (
                "name",
                "kind",
                "vendor",
                "base_url",
                "api_version",
                "intake",
                "rate_limit_per_minute",
                "is_sandbox",
                "is_active",
            )
        }
        try:
            URLValidator(schemes=["http", "https"])(merged["base_url"])
        except DjangoValidationError:
            raise Unprocessable({"base_url": ["not a valid address"]}) from None
        try:
            check_destination(merged["base_url"], vendor=merged["vendor"], is_sandbox=bool(merged["is_sandbox"]))
        except DestinationRefused as exc:
            raise Unprocessable({"base_url": [exc.message]}) from None
        credentials = data.get("credentials")
        if credentials is not None and not credentials:
            raise Unprocessable({"credentials": ["give at least one entry, or leave credentials out to keep them"]})
        try:
            return connection_save(
                slug=current.slug if current else data["slug"],
                entities=entities,
                credentials=credentials,
                actor=request.user,
                **merged,
            )
        except ConnectionChangeRefused as refusal:
            if refusal.forbidden:
                raise PermissionDenied(refusal.message) from None
            raise Unprocessable({refusal.field: [refusal.message]}) from None

    @extend_schema(
        summary="Create a connection",
        tags=["connections"],
        request=serializers.ConnectionWriteSerializer,
        responses={201: serializers.ConnectionSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = serializers.ConnectionWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        if Connection.objects.filter(slug=body.validated_data["slug"]).exists():
            raise Conflict("another connection already uses this slug")
        connection = self._save(request, body.validated_data, None)
        return Response(serializers.ConnectionSerializer(connection).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Change a connection; credentials are replaced only when given",
        tags=["connections"],
        request=serializers.ConnectionUpdateSerializer,
        responses={200: serializers.ConnectionSerializer},
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        current = self.get_object()
        body = serializers.ConnectionUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        connection = self._save(request, body.validated_data, current)
        return Response(serializers.ConnectionSerializer(connection).data)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        if not kwargs.get("partial"):
            return self.http_method_not_allowed(request)
        return super().update(request, *args, **kwargs)


# --- Mismatches, metrics, audit --------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="List reconciliation mismatches", tags=["mismatches"]),
    retrieve=extend_schema(summary="A mismatch", tags=["mismatches"]),
)
class MismatchViewSet(viewsets.ReadOnlyModelViewSet):
    required_permissions = {"read": VIEW_DASHBOARDS}
    serializer_class = serializers.MismatchSerializer
    filterset_class = filters.MismatchFilter

    def get_queryset(self) -> QuerySet[Mismatch]:
        return scope_queryset(Mismatch.objects.select_related("legal_entity"), self.request.user)


class HealthMetricsView(APIView):
    required_permissions = {"read": VIEW_DASHBOARDS}

    @extend_schema(
        summary="Integration health figures (as on the health dashboard)",
        tags=["metrics"],
        responses={200: serializers.HealthMetricsSerializer},
    )
    def get(self, request: Request) -> Response:
        s = health_summary(request.user)
        data = {
            "by_status": s.by_status,
            "oldest_open_handoff": s.oldest_open.pk if s.oldest_open else None,
            "oldest_open_age_seconds": s.oldest_open_age.total_seconds() if s.oldest_open_age else None,
            "overdue": s.overdue,
            "succeeded_last_hour": s.succeeded_last_hour,
            "attempts_last_day": s.attempts_last_day,
            "failed_attempts_last_day": s.failed_attempts_last_day,
            "failure_rate": s.failure_rate,
        }
        return Response(serializers.HealthMetricsSerializer(data).data)


class ConnectionActivityView(APIView):
    required_permissions = {"read": VIEW_DASHBOARDS}

    @extend_schema(
        summary="Events per connection in the last day (as on the health dashboard)",
        tags=["metrics"],
        responses={200: serializers.ConnectionActivitySerializer(many=True)},
    )
    def get(self, request: Request) -> Response:
        rows = [
            {
                "connection": row["connection"].slug,
                "name": row["connection"].name,
                "kind": row["connection"].kind,
                "vendor": row["connection"].vendor,
                "last_event_at": row["last_event_at"],
                "events_last_day": row["events_last_day"],
            }
            for row in connection_activity(request.user)
        ]
        return Response(serializers.ConnectionActivitySerializer(rows, many=True).data)


@extend_schema_view(
    list=extend_schema(summary="List audit entries", tags=["audit"]),
    retrieve=extend_schema(summary="An audit entry", tags=["audit"]),
)
class AuditEntryViewSet(viewsets.ReadOnlyModelViewSet):
    required_permissions = {"read": VIEW_AUDIT}
    serializer_class = serializers.AuditEntrySerializer
    filterset_class = filters.AuditEntryFilter

    def get_queryset(self) -> QuerySet[AuditEntry]:
        return scope_queryset(AuditEntry.objects.select_related("legal_entity"), self.request.user)


# --- Exception causes: the workbench's groups, keyed by cause id ------------------------------


def _query(request: Request, query_class: type) -> dict[str, Any]:
    """Query parameters through their serializer. A parameter given empty is an error, not "not
    given" (DRF's reading of an empty form value), as in the lists' filters."""
    query = query_class(data=request.query_params)
    empty = {name: ["may not be empty"] for name in query.fields if "" in request.query_params.getlist(name, [None])}
    if empty:
        raise ValidationError(empty)
    query.is_valid(raise_exception=True)
    return query.validated_data


def _entity_codes() -> dict[str, str]:
    return dict(LegalEntity.objects.values_list("name", "code"))


def _cause_data(row: InboxGroup, codes: dict[str, str]) -> dict[str, Any]:
    cause = row.cause
    return {
        "id": cause.pk,
        "flow": cause.flow,
        "step": cause.step_name,
        "error_class": cause.error_class,
        "message": cause.message,
        "status": cause.status,
        "assignee": cause.assignee.get_username() if cause.assignee else None,
        "archived_until": cause.archived_until,
        "archived_until_occurrences": cause.archived_until_occurrences,
        "count": row.count,
        "first_seen": row.first_seen,
        "last_seen": row.last_seen,
        "money": [{"currency": c, "amount": a} for c, a in row.money],
        "customers": row.customers,
        "legal_entities": sorted(codes.get(name, name) for name in row.entities),
    }


@extend_schema_view(
    list=extend_schema(
        summary="List exception causes as the inbox shows them (one page, at most 200)",
        description="The workbench's groups: one row per cause with totals over your entities only, "
        "filtered and sorted like the inbox.",
        tags=["exceptions"],
        parameters=[serializers.CauseListQuerySerializer],
        responses={200: serializers.ExceptionCausePageSerializer},
    ),
    retrieve=extend_schema(
        summary="A cause with its runbook, its handoffs and comments",
        tags=["exceptions"],
        responses={200: serializers.ExceptionCauseDetailSerializer},
    ),
)
class ExceptionCauseViewSet(viewsets.GenericViewSet):
    """Cause-level actions of the workbench, through its services (remediation/services.py)."""

    required_permissions = {"read": WORK_EXCEPTIONS, "write": WORK_EXCEPTIONS, "runbook": CONFIGURE}
    queryset = ExceptionCause.objects.none()
    serializer_class = serializers.ExceptionCauseSerializer  # for OPTIONS; answers pick theirs
    lookup_value_regex = "[0-9]+"
    pagination_class = None
    filter_backends: list[type] = []

    def get_queryset(self) -> QuerySet[ExceptionCause]:
        return causes_visible_to(self.request.user)

    def _detail(self, cause: ExceptionCause) -> Response:
        cause = self.get_queryset().get(pk=cause.pk)  # re-read after an action
        user = self.request.user
        data = _cause_data(cause_row(user, cause), _entity_codes())
        data["runbook"] = {
            "meaning": cause.runbook_meaning,
            "cause": cause.runbook_cause,
            "action": cause.runbook_action,
            "link": cause.runbook_link,
        }
        data["handoffs"] = cause_handoff_ids(user, cause)
        data["comments"] = cause_comments(user, cause)
        return Response(serializers.ExceptionCauseDetailSerializer(data).data)

    def list(self, request: Request) -> Response:
        q = _query(request, serializers.CauseListQuerySerializer)
        f = InboxFilter(
            tab=q["tab"],
            sort=q["sort"],
            q=q.get("q", "").strip(),
            flow=q.get("flow", ""),
            step=q.get("step", ""),
            error_class=q.get("error_class", ""),
            legal_entity=q.get("legal_entity", ""),
            customer=q.get("customer", "").strip(),
            connection=q.get("connection", ""),
            assignee=q.get("assignee", ""),
            age=str(q["age"]) if "age" in q else "",
        )
        codes = _entity_codes()
        rows = [_cause_data(row, codes) for row in inbox_groups(request.user, f, limit=200)]
        results = serializers.ExceptionCauseSerializer(rows, many=True).data
        return Response({"next": None, "previous": None, "results": results})

    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return self._detail(self.get_object())

    @extend_schema(
        summary="Assign the whole cause to a person (or unassign with null)",
        tags=["exceptions"],
        request=serializers.AssignSerializer,
        responses={200: serializers.ExceptionCauseDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def assign(self, request: Request, pk: str | None = None) -> Response:
        cause = self.get_object()
        data = serializers.AssignSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        remediation.cause_assign(actor=request.user, cause=cause, assignee=_assignee(data.validated_data["assignee"]))
        return self._detail(cause)

    @extend_schema(
        summary="Archive until a day, or until N more occurrences",
        description="An archived cause leaves the open tab; it comes back when the day comes or after "
        "that many new failures, whichever is first.",
        tags=["exceptions"],
        request=serializers.CauseArchiveSerializer,
        responses={200: serializers.ExceptionCauseDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def archive(self, request: Request, pk: str | None = None) -> Response:
        cause = self.get_object()
        body = serializers.CauseArchiveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        day = data.get("until")
        if day is not None and day <= clock.now().date():
            raise Unprocessable({"until": ["give a day after today"]})
        until = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) if day else None
        try:
            remediation.cause_archive(
                actor=request.user,
                cause=cause,
                until=until,
                occurrences=data.get("occurrences"),
                reason=data["reason"],
            )
        except remediation.ActionRefused as exc:
            raise Unprocessable({"non_field_errors": [str(exc)]}) from None
        return self._detail(cause)

    @extend_schema(
        summary="Reopen an archived cause: back to the inbox now",
        tags=["exceptions"],
        request=serializers.EmptySerializer,
        responses={200: serializers.ExceptionCauseDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def reopen(self, request: Request, pk: str | None = None) -> Response:
        cause = self.get_object()
        serializers.EmptySerializer(data=request.data).is_valid(raise_exception=True)
        if cause.status != ExceptionStatus.ARCHIVED:
            raise Conflict(f"This cause is “{cause.get_status_display()}”, not archived: there is nothing to reopen.")
        remediation.cause_unarchive(actor=request.user, cause=cause)
        return self._detail(cause)

    @extend_schema(
        summary="Edit the runbook (admins); parts left out stay as they are",
        tags=["exceptions"],
        request=serializers.RunbookWriteSerializer,
        responses={200: serializers.ExceptionCauseDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def runbook(self, request: Request, pk: str | None = None) -> Response:
        cause = self.get_object()
        body = serializers.RunbookWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        fields = {
            f"runbook_{part}": getattr(cause, f"runbook_{part}") for part in ("meaning", "cause", "action", "link")
        }
        fields.update({f"runbook_{part}": value for part, value in body.validated_data.items()})
        remediation.runbook_save(actor=request.user, cause=cause, fields=fields)
        return self._detail(cause)

    @extend_schema(
        summary="Comment on the cause",
        tags=["exceptions"],
        request=serializers.CommentCreateSerializer,
        responses={201: serializers.CommentSerializer},
    )
    @action(detail=True, methods=["post"])
    def comment(self, request: Request, pk: str | None = None) -> Response:
        cause = self.get_object()
        body = serializers.CommentCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            created = remediation.comment_add(actor=request.user, cause=cause, body=body.validated_data["body"])
        except remediation.ActionRefused as exc:
            raise Unprocessable({"body": [str(exc)]}) from None
        return Response(serializers.CommentSerializer(created).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(summary="List the team's saved inbox views", tags=["exceptions"]),
    retrieve=extend_schema(summary="A saved inbox view", tags=["exceptions"]),
    destroy=extend_schema(summary="Delete a saved view (its creator or an admin)", tags=["exceptions"]),
)
class SavedViewViewSet(mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    """Named inbox filters, shared with the team (the workbench's saved views)."""

    required_permissions = {"read": WORK_EXCEPTIONS, "write": WORK_EXCEPTIONS}
    serializer_class = serializers.SavedViewSerializer
    queryset = SavedView.objects.select_related("created_by")
    filter_backends: list[type] = []

    @extend_schema(
        summary="Save an inbox view for the team (a view of the same name is replaced)",
        tags=["exceptions"],
        request=serializers.SavedViewCreateSerializer,
        responses={201: serializers.SavedViewSerializer, 200: serializers.SavedViewSerializer},
    )
    def create(self, request: Request) -> Response:
        body = serializers.SavedViewCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        name, query = body.validated_data["name"].strip(), body.validated_data["query"].lstrip("?")
        problems = _inbox_query_problems(query)
        if problems:
            raise Unprocessable({"query": problems})
        existed = SavedView.objects.filter(name=name[:120]).exists()
        try:
            view = remediation.saved_view_save(actor=request.user, name=name, query=query)
        except remediation.ActionRefused as exc:
            raise Unprocessable({"name": [str(exc)]}) from None
        code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
        return Response(serializers.SavedViewSerializer(view).data, status=code)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        view = self.get_object()
        if view.created_by_id != request.user.pk and not request.user.has_perm(CONFIGURE):
            raise PermissionDenied("Only whoever saved this view, or an admin, may delete it.")
        remediation.saved_view_delete(actor=request.user, view=view)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _inbox_query_problems(query: str) -> list[str]:
    """A saved view's query must be one the inbox understands: its filters, each valid as the
    shared filter set reads it (remediation.filters), and a valid sort."""
    params = QueryDict(query)
    problems = [f"unknown inbox filter: {name}" for name in sorted(set(params) - set(INBOX_FILTERS))]
    found = filters.ExceptionFilter(page_params(params), queryset=HandoffException.objects.none())
    if not found.is_valid():
        problems += [f"{name}: {message}" for name, messages in found.errors.items() for message in messages]
    if params.get("sort", "count") not in INBOX_SORTS:
        problems.append(f"sort must be one of: {', '.join(INBOX_SORTS)}")
    return problems


# --- Replay -----------------------------------------------------------------------------------


class ReplayViewSet(viewsets.ViewSet):
    """Re-run what a connection's events in a time window led to (the workbench's /workbench/replay/):
    preview the scope, then start a replay job (resubmit, re-reading the source) and poll it."""

    refuses_well_formed_queries = True  # documents the 422 (api.schema)
    required_permissions = {"read": WORK_EXCEPTIONS, "write": WORK_EXCEPTIONS}

    def _scope(self, request: Request, data: dict[str, Any]) -> dict[str, Any]:
        # Well-formed but refused (422): a window that ends before it starts, a connection the
        # caller cannot see (the same answer as one that does not exist).
        if data["end"] <= data["start"]:
            raise Unprocessable({"end": ["the window's end must be after its start"]})
        connection = _connections_for(request.user).filter(slug=data["connection"]).first()
        if connection is None:
            raise Unprocessable({"connection": ["no connection with this slug"]})
        scope = remediation.replay_scope(
            user=request.user, connection_id=connection.pk, start=data["start"], end=data["end"]
        )
        return {**scope, "connection": connection.slug, "start": data["start"], "end": data["end"]}

    @extend_schema(
        summary="Preview a replay: events in the window and the handoffs a replay would re-run",
        tags=["jobs"],
        parameters=[serializers.ReplayWindowSerializer],
        responses={200: serializers.ReplayPreviewSerializer},
    )
    @action(detail=False, methods=["get"])
    def preview(self, request: Request) -> Response:
        scope = self._scope(request, _query(request, serializers.ReplayWindowSerializer))
        return Response(serializers.ReplayPreviewSerializer(scope).data)

    @extend_schema(
        summary="Start a replay job over a connection's time window",
        tags=["jobs"],
        request=serializers.ReplayCreateSerializer,
        responses={202: serializers.BulkJobSerializer},
    )
    def create(self, request: Request) -> Response:
        body = serializers.ReplayCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        scope = self._scope(request, data)
        try:
            job = remediation.bulk_job_create(
                actor=request.user,
                kind=BulkJob.Kind.REPLAY,
                handoff_ids=scope["handoff_ids"],
                reason=data["reason"],
                params={
                    "connection": scope["connection"],
                    "start": data["start"].isoformat(),
                    "end": data["end"].isoformat(),
                },
            )
        except remediation.ActionRefused as exc:
            raise Unprocessable({"non_field_errors": [str(exc)]}) from None
        return _job_accepted(request, job)


def _job_accepted(request: Request, job: BulkJob) -> Response:
    headers = {"Location": request.build_absolute_uri(reverse("api:job-detail", args=[job.pk]))}
    return Response(serializers.BulkJobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers=headers)


# --- Metrics, reconciliation runs, SLAs ----------------------------------------------------------

EARLIEST, LATEST, MAX_DAYS = dt.date(2000, 1, 1), dt.date(2100, 12, 31), 731


def _dashboard_filters(request: Request, query_class: type) -> tuple[Filters, dict[str, Any]]:
    """The dashboards' filters from the query string, validated (a bad date is a 400, never "today"),
    and limited to the caller's entities: a code outside them counts nothing."""
    q = _query(request, query_class)
    end = q.get("to") or clock.now().date()
    start = q.get("from") or end - dt.timedelta(days=29)
    # Malformed dates were a 400 above; well-formed ones the dashboards cannot answer are a 422.
    for name, day in (("from", start), ("to", end)):
        if not EARLIEST <= day <= LATEST:
            raise Unprocessable({name: [f"give a day from {EARLIEST} to {LATEST}"]})
    if start > end:
        raise Unprocessable({"from": ["must not be after to"]})
    if (end - start).days >= MAX_DAYS:
        raise Unprocessable({"to": [f"a period is at most {MAX_DAYS} days"]})
    allowed = entity_ids_for(request.user)
    ids: tuple[int, ...] | None = None if allowed is None else tuple(allowed)
    codes = [c.strip() for c in q.get("legal_entity", "").split(",") if c.strip()]
    if codes:
        wanted = set(LegalEntity.objects.filter(code__in=codes).values_list("pk", flat=True))
        ids = tuple(sorted(wanted if allowed is None else wanted & set(allowed)))
    connection_id = None
    if q.get("connection"):
        # An unknown slug (or another entity's) matches nothing rather than being ignored.
        connection_id = _connections_for(request.user).filter(slug=q["connection"]).values_list("pk", flat=True).first()
        connection_id = connection_id or -1
    f = Filters(
        start=start,
        end=end,
        entity_ids=ids,
        service_line=q.get("service_line", "").strip(),
        customer=q.get("customer", "").strip(),
        connection_id=connection_id,
        currency=q.get("currency", ""),
    )
    if f.currency and f.currency not in known_currencies():
        raise Unprocessable({"currency": [f"choose one of {', '.join(known_currencies())}"]})
    return f, q


class MetricsView(APIView):
    """Every KPI of the dashboards' overview (the JSON the overview's figures come from)."""

    refuses_well_formed_queries = True  # documents the 422 (api.schema)
    required_permissions = {"read": VIEW_DASHBOARDS}

    @extend_schema(
        operation_id="metrics_retrieve",
        summary="Every overview KPI with its value, unit, count of records and definition",
        tags=["metrics"],
        parameters=[serializers.MetricsQuerySerializer],
        responses={200: serializers.MetricsSerializer},
    )
    def get(self, request: Request) -> Response:
        f, _ = _dashboard_filters(request, serializers.MetricsQuerySerializer)
        return Response(serializers.MetricsSerializer(metrics_payload(f)).data)


class LatencySeriesView(APIView):
    refuses_well_formed_queries = True  # documents the 422 (api.schema)
    required_permissions = {"read": VIEW_DASHBOARDS}

    @extend_schema(
        summary="Business latency per ISO week and flow: measured, median, p90, % within SLA",
        tags=["metrics"],
        parameters=[serializers.LatencyQuerySerializer],
        responses={200: serializers.LatencySeriesSerializer},
    )
    def get(self, request: Request) -> Response:
        f, q = _dashboard_filters(request, serializers.LatencyQuerySerializer)
        flows = [q["flow"]] if q.get("flow") else list(FLOW_MEASURES)
        data = {
            "from": f.start,
            "to": f.end,
            "reporting_currency": reporting_currency(),
            "currency_policy": policy_text(),
            "currency": reporting_currency(),
            "flows": [
                {
                    "flow": flow,
                    "measure": FLOW_MEASURES[flow]["label"],
                    "sla": sla_for(flow).target_label,
                    "weeks": [_finite(week) for week in weekly_latency(f, flow)],
                }
                for flow in flows
            ],
        }
        return Response(serializers.LatencySeriesSerializer(data).data)


def _finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON has no infinity: a percentile in the histograms' open last bucket (over a year) is null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


@extend_schema_view(
    list=extend_schema(summary="List reconciliation runs, newest first", tags=["mismatches"]),
    retrieve=extend_schema(
        summary="A reconciliation run: what was checked and found, or why it stopped", tags=["mismatches"]
    ),
)
class ReconciliationRunViewSet(viewsets.ReadOnlyModelViewSet):
    required_permissions = {"read": VIEW_DASHBOARDS}
    serializer_class = serializers.ReconciliationRunSerializer
    filterset_class = filters.ReconciliationRunFilter

    def get_queryset(self) -> QuerySet[ReconciliationRun]:
        return scope_queryset(ReconciliationRun.objects.select_related("legal_entity"), self.request.user)


def _sla_data(flow: str) -> dict[str, Any]:
    sla = sla_for(flow)
    return {
        "flow": flow,
        "measure": FLOW_MEASURES[flow]["label"],
        "target": sla.target,
        "unit": sla.unit,
        "target_label": sla.target_label,
        "sync_measure": FLOW_MEASURES[flow]["sync"],
        "sync_target_minutes": sla.sync_target_minutes,
        "note": sla.note,
        "is_default": sla.pk is None,
        "updated_at": sla.updated_at if sla.pk else None,
    }


@extend_schema_view(
    list=extend_schema(
        summary="Every flow's SLA (one page)", tags=["metrics"], responses={200: serializers.FlowSlaPageSerializer}
    ),
    retrieve=extend_schema(summary="A flow's SLA", tags=["metrics"], responses={200: serializers.FlowSlaSerializer}),
)
class FlowSlaViewSet(viewsets.ViewSet):
    """Each flow's business-latency SLA: the dashboards' "% within SLA" and the SLA-breach alert use it."""

    required_permissions = {"read": VIEW_DASHBOARDS, "write": CONFIGURE}
    lookup_field = "flow"
    lookup_value_regex = "[a-z-]+"

    def _flow(self, flow: str) -> str:
        if flow not in FLOW_MEASURES:
            raise NotFound("No such flow.")
        return flow

    def list(self, request: Request) -> Response:
        results = serializers.FlowSlaSerializer([_sla_data(f) for f in FLOW_MEASURES], many=True).data
        return Response({"next": None, "previous": None, "results": results})

    def retrieve(self, request: Request, flow: str = "") -> Response:
        return Response(serializers.FlowSlaSerializer(_sla_data(self._flow(flow))).data)

    @extend_schema(
        summary="Set a flow's SLA (admins); breach flags are recomputed",
        tags=["metrics"],
        request=serializers.FlowSlaWriteSerializer,
        responses={200: serializers.FlowSlaSerializer},
    )
    def update(self, request: Request, flow: str = "") -> Response:
        flow = self._flow(flow)
        body = serializers.FlowSlaWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if data["target"] <= 0:
            raise Unprocessable({"target": ["an SLA is a time greater than zero"]})
        flow_sla_set(
            actor=request.user,
            flow=flow,
            target=data["target"],
            unit=data["unit"],
            note=data["note"],
            sync_target_minutes=data.get("sync_target_minutes"),
        )
        return Response(serializers.FlowSlaSerializer(_sla_data(flow)).data)
