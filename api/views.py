"""The REST API (/api/v1/). Views are thin: scope the queryset, check the role (RolePermission
reads `required_permissions`), validate with an input serializer, call the service, answer with
an output serializer. Business rules live in the services they call."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.core.validators import URLValidator
from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import filters, serializers
from api.errors import Conflict, Unprocessable
from api.selectors import exception_group_get, group_id
from connectors.egress import DestinationRefused, check_destination
from connectors.models import Connection
from dashboards.queries import connection_activity, health_summary
from pscsync.access import CONFIGURE, VIEW_DASHBOARDS, VIEW_HANDOFFS, WORK_EXCEPTIONS, entity_ids_for, scope_queryset
from pscsync.mapping import RuleProblem
from pscsync.mappings import MappingInvalid, mapping_publish
from pscsync.models import AuditEntry, Event, Handoff, LegalEntity, Mapping, MappingVersion, Mismatch, Step
from pscsync.selectors import handoffs_visible_to
from pscsync.services import connection_save
from remediation import services as remediation
from remediation.models import BulkJob
from remediation.selectors import exception_groups

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
    filterset_class = filters.ExceptionFilter

    def get_queryset(self) -> QuerySet[Handoff]:
        steps = Step.objects.select_related("target_connection").prefetch_related("attempts")
        qs = (
            handoffs_visible_to(self.request.user)
            .select_related("exception__assignee", "exception__cause")
            .prefetch_related(Prefetch("steps", queryset=steps))
        )
        if self.action in ("list", "retrieve"):
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


class ExceptionGroupListView(APIView):
    """Exceptions grouped by cause (flow, error class, message with its variable parts blanked)."""

    required_permissions = {"read": WORK_EXCEPTIONS}

    @extend_schema(
        operation_id="exception_groups_list",
        summary="List exception groups, largest first (one page: groups are few)",
        tags=["exceptions"],
        responses={200: serializers.ExceptionGroupPageSerializer},
    )
    def get(self, request: Request) -> Response:
        groups = [_group_data(g) for g in exception_groups(request.user)]
        data = serializers.ExceptionGroupSerializer(groups, many=True).data
        return Response({"next": None, "previous": None, "results": data})


class ExceptionGroupDetailView(APIView):
    required_permissions = {"read": WORK_EXCEPTIONS}

    @extend_schema(
        summary="An exception group and its handoffs",
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
        if bool(data.get("handoffs")) == bool(data.get("group")):
            raise Unprocessable({"non_field_errors": ["give either handoffs or group"]})
        ids = list(data.get("handoffs") or [])
        if data.get("group"):
            group = exception_group_get(request.user, data["group"])
            if group is None:
                raise Unprocessable({"group": ["no exception group with this id"]})
            ids = [h.pk for h in group.handoffs]
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
        headers = {"Location": request.build_absolute_uri(f"{job.pk}/")}
        return Response(serializers.BulkJobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers=headers)


# --- Mappings and connections ---------------------------------------------------------------


def _problems(problems: list[RuleProblem]) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for p in problems:
        key = f"rules[{p.rule}].{p.part}" if p.rule else p.part
        errors.setdefault(key, []).append(p.message)
    return errors


def _connections_for(user: Any) -> QuerySet[Connection]:
    return scope_queryset(Connection.objects.prefetch_related("legal_entities"), user, "legal_entities")


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
        return connection_save(
            slug=current.slug if current else data["slug"],
            entities=entities,
            credentials=credentials,
            actor=request.user,
            **merged,
        )

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
