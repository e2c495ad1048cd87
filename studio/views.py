"""The mapping studio (admins only): mappings per connection, a draft edited rule by rule,
value maps with CSV, live and impact previews, publishing, versions with diff and restore,
import and export. Thin views: every change is a service in studio.services."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import messages
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from connectors.models import Connection
from pscsync.access import CONFIGURE, permission_required, scope_queryset
from pscsync.models import Handoff, Mapping, MappingVersion
from pscsync.request_types import SignedInRequest
from remediation.models import BulkJob
from remediation.services import ActionRefused, bulk_job_create
from studio import services
from studio.services import StudioError


def _connections(request: HttpRequest) -> QuerySet[Connection]:
    return scope_queryset(Connection.objects.all(), request.user, "legal_entities").distinct()


def _mapping(request: HttpRequest, pk: int) -> Mapping:
    return get_object_or_404(
        Mapping.objects.select_related("connection").filter(connection__in=_connections(request)), pk=pk
    )


def _draft(mapping: Mapping) -> MappingVersion:
    draft = services.draft_of(mapping)
    if draft is None:
        raise Http404("this mapping has no draft: start one first")
    return draft


@permission_required(CONFIGURE)
@require_GET
def mapping_list(request: SignedInRequest) -> HttpResponse:
    groups = []
    for connection in _connections(request).order_by("name"):
        rows = []
        for mapping in connection.mappings.order_by("entity", "direction"):
            versions = {v.status: v for v in mapping.versions.filter(status__in=["published", "draft"])}
            rows.append({"mapping": mapping, "published": versions.get("published"), "draft": versions.get("draft")})
        groups.append({"connection": connection, "rows": rows})
    return render(request, "studio/list.html", {"groups": groups})


def _detail_context(mapping: Mapping, **extra: Any) -> dict[str, Any]:
    in_force = services.published(mapping)
    draft = services.draft_of(mapping)
    shown = draft or in_force
    value_maps = []
    for name, table in (shown.value_maps if shown else {}).items():
        rows = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in table.items()]
        value_maps.append({"name": name, "rows": rows, "blank": range(3)})
    return {
        "mapping": mapping,
        "in_force": in_force,
        "draft": draft,
        "shown": shown,
        "rules": list(enumerate(shown.rules, start=1)) if shown else [],
        "value_maps": value_maps,
        "value_map_names": sorted(shown.value_maps) if shown else [],
        "transforms": services.transforms(),
        "versions": mapping.versions.exclude(status="draft").select_related("created_by").order_by("-number"),
        "changes": services.versions_diff(in_force, draft) if draft else [],
        "samples": services.sample_documents(mapping),
        **extra,
    }


@permission_required(CONFIGURE)
@require_GET
def mapping_detail(request: SignedInRequest, pk: int) -> HttpResponse:
    # ?field=<target> highlights that rule, ?open=<value map> opens that table: the workbench's
    # fix buttons for a mapping error land on the rule or value map that failed.
    context = _detail_context(
        _mapping(request, pk), open_map=request.GET.get("open", ""), focus_field=request.GET.get("field", "")
    )
    return render(request, "studio/detail.html", context)


@permission_required(CONFIGURE)
@require_POST
def draft_start(request: SignedInRequest, pk: int) -> HttpResponse:
    services.draft_open(mapping=_mapping(request, pk), actor=request.user)
    return redirect("studio:detail", pk=pk)


@permission_required(CONFIGURE)
@require_POST
def rule_save_view(request: SignedInRequest, pk: int, position: int) -> HttpResponse:
    mapping = _mapping(request, pk)
    draft = _draft(mapping)
    problems = []
    try:
        draft = services.rule_save(draft=draft, position=position, data=request.POST, actor=request.user)
    except StudioError as exc:
        problems = exc.problems
    if request.htmx and position <= len(draft.rules):
        rule = draft.rules[position - 1] if not problems else services.rule_from_form(request.POST)
        context = _detail_context(mapping, saved=not problems)
        context.update(position=position, rule=rule, problems=problems)
        return render(request, "studio/_rule.html", context, status=422 if problems else 200)
    for problem in problems:
        messages.error(request, str(problem))
    return redirect(reverse("studio:detail", args=[pk]) + "#rules")


@permission_required(CONFIGURE)
@require_POST
def rule_remove_view(request: SignedInRequest, pk: int, position: int) -> HttpResponse:
    mapping = _mapping(request, pk)
    try:
        services.rule_remove(draft=_draft(mapping), position=position, actor=request.user)
    except StudioError as exc:
        messages.error(request, str(exc))
    return redirect(reverse("studio:detail", args=[pk]) + "#rules")


@permission_required(CONFIGURE)
@require_POST
def rule_move_view(request: SignedInRequest, pk: int, position: int) -> HttpResponse:
    mapping = _mapping(request, pk)
    step = -1 if request.POST.get("direction") == "up" else 1
    try:
        services.rule_move(draft=_draft(mapping), position=position, step=step, actor=request.user)
    except StudioError as exc:
        messages.error(request, str(exc))
    return redirect(reverse("studio:detail", args=[pk]) + "#rules")


@permission_required(CONFIGURE)
@require_POST
def value_map_save_view(request: SignedInRequest, pk: int) -> HttpResponse:
    mapping = _mapping(request, pk)
    draft = _draft(mapping)
    name = request.POST.get("name", "")
    try:
        if request.POST.get("csv", "").strip() or request.FILES.get("csv_file"):
            upload = request.FILES.get("csv_file")
            text = request.POST.get("csv") or (upload.read().decode("utf-8-sig") if upload else "")
            table = services.value_map_from_csv(text, name)
        else:
            keys, values = request.POST.getlist("key"), request.POST.getlist("value")
            table = services.value_map_rows(list(zip(keys, values, strict=False)), name)
        services.value_map_save(draft=draft, name=name, table=table, actor=request.user)
        messages.success(request, f"Value map {name!r} saved in the draft ({len(table)} entries).")
    except StudioError as exc:
        for problem in exc.problems:
            messages.error(request, str(problem))
    return redirect(reverse("studio:detail", args=[pk]) + f"?open={name}#value-maps")


@permission_required(CONFIGURE)
@require_GET
def value_map_csv(request: SignedInRequest, pk: int, name: str) -> HttpResponse:
    mapping = _mapping(request, pk)
    shown = services.draft_of(mapping) or services.published(mapping)
    if shown is None or name not in shown.value_maps:
        raise Http404("no such value map")
    response = HttpResponse(services.value_map_to_csv(shown.value_maps[name]), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{mapping.connection.slug}-{mapping.entity}-{name}.csv"'
    return response


@permission_required(CONFIGURE)
@require_POST
def preview_view(request: SignedInRequest, pk: int) -> HttpResponse:
    mapping = _mapping(request, pk)
    version = services.draft_of(mapping) or services.published(mapping)
    pasted = request.POST.get("document", "").strip()
    error, result, document = "", None, None
    if pasted:
        try:
            document = json.loads(pasted)
            if not isinstance(document, dict):
                raise ValueError('a JSON object is needed, e.g. {"deal": {...}}')
        except ValueError as exc:
            error = f"That is not a JSON object: {exc}"
    else:
        samples = services.sample_documents(mapping)
        try:
            index = int(request.POST.get("sample") or 0)
        except ValueError:
            index = -1
        if samples and 0 <= index < len(samples):
            document = samples[index].document
        else:
            error = "Pick a stored record or paste one as JSON."
    if document is not None and version is not None:
        result = services.preview(version, document)
    return render(
        request,
        "studio/_preview.html",
        {
            "result": result,
            "error": error,
            "document": json.dumps(document, indent=2) if document else "",
            "version": version,
        },
    )


@permission_required(CONFIGURE)
@require_GET
def impact_view(request: SignedInRequest, pk: int) -> HttpResponse:
    return _impact(request, _mapping(request, pk))


def _impact(request: HttpRequest, mapping: Mapping) -> HttpResponse:
    version = services.draft_of(mapping) or services.published(mapping)
    result = services.impact(version) if version else None
    # The values a missing one may map to: the ones already in the table, offered in a list.
    targets = {}
    if version is not None:
        for name, table in version.value_maps.items():
            targets[name] = sorted({v for v in table.values() if isinstance(v, str)})
    return render(
        request,
        "studio/_impact.html",
        {"impact": result, "version": version, "mapping": mapping, "targets": targets},
    )


@permission_required(CONFIGURE)
@require_POST
def value_map_add_view(request: SignedInRequest, pk: int) -> HttpResponse:
    """ "Add this value to the value map" from the impact list: one entry into the draft (opened
    when there is none), then back to the impact list, which now counts it."""
    mapping = _mapping(request, pk)
    name, key = request.POST.get("name", ""), request.POST.get("key", "")
    try:
        services.value_map_entry_add(
            mapping=mapping, name=name, key=key, value=request.POST.get("value", ""), actor=request.user
        )
    except StudioError as exc:
        if request.htmx:
            return HttpResponse("; ".join(str(p) for p in exc.problems), status=422)
        for problem in exc.problems:
            messages.error(request, str(problem))
        return redirect(reverse("studio:detail", args=[pk]) + "#impact")
    messages.success(request, f"{key} added to the value map {name} in the draft: publish to use it.")
    if request.htmx:
        return _impact(request, mapping)
    return redirect(reverse("studio:detail", args=[pk]) + f"?open={name}#value-maps")


@permission_required(CONFIGURE)
@require_POST
def publish_view(request: SignedInRequest, pk: int) -> HttpResponse:
    mapping = _mapping(request, pk)
    draft = _draft(mapping)
    try:
        version = services.draft_publish(draft=draft, comment=request.POST.get("comment", ""), actor=request.user)
    except StudioError as exc:
        for problem in exc.problems:
            messages.error(request, str(problem))
        return redirect(reverse("studio:detail", args=[pk]) + "#publish")
    messages.success(request, f"Published v{version.number}. Handoffs that run from now on use it.")
    return redirect(reverse("studio:detail", args=[pk]) + "#publish")


@permission_required(CONFIGURE)
@require_POST
def discard_view(request: SignedInRequest, pk: int) -> HttpResponse:
    services.draft_discard(draft=_draft(_mapping(request, pk)), actor=request.user)
    messages.success(request, "Draft discarded; the version in force is unchanged.")
    return redirect("studio:detail", pk=pk)


@permission_required(CONFIGURE)
@require_POST
def rerun_view(request: SignedInRequest, pk: int) -> HttpResponse:
    """Hand the handoffs this mapping now lets through to the workbench's bulk retry: a tracked,
    audited job; each handoff resumes at the step that failed with the version in force."""
    mapping = _mapping(request, pk)
    version = services.published(mapping)
    if version is None:
        messages.error(request, "This mapping has no published version yet: publish it first, then re-run.")
        return redirect(reverse("studio:detail", args=[pk]) + "#publish")
    candidates = [h.pk for h in services.impact(version).would_pass]
    allowed = list(scope_queryset(Handoff.objects.filter(pk__in=candidates), request.user).values_list("pk", flat=True))
    try:
        job = bulk_job_create(
            actor=request.user,
            kind=BulkJob.Kind.RETRY,
            handoff_ids=allowed,
            reason=f"re-run after publishing {version.label}",
        )
    except ActionRefused as refused:
        messages.error(request, str(refused))
        return redirect(reverse("studio:detail", args=[pk]) + "#publish")
    messages.success(request, f"{job.total} handoffs sent back to run with {version.label}: follow the job below.")
    return redirect("remediation:job", pk=job.pk)


@permission_required(CONFIGURE)
@require_GET
def version_view(request: SignedInRequest, pk: int, number: int) -> HttpResponse:
    mapping = _mapping(request, pk)
    version = get_object_or_404(mapping.versions, number=number)
    previous = mapping.versions.filter(number__lt=number).exclude(status="draft").order_by("-number").first()
    return render(
        request,
        "studio/version.html",
        {
            "mapping": mapping,
            "version": version,
            "previous": previous,
            "changes": services.versions_diff(previous, version),
        },
    )


@permission_required(CONFIGURE)
@require_POST
def restore_view(request: SignedInRequest, pk: int, number: int) -> HttpResponse:
    mapping = _mapping(request, pk)
    version = get_object_or_404(mapping.versions.exclude(status="draft"), number=number)
    services.draft_open(mapping=mapping, actor=request.user, based_on=version)
    messages.success(request, f"The draft now holds v{number}'s rules and value maps: review, then publish.")
    return redirect("studio:detail", pk=pk)


@permission_required(CONFIGURE)
@require_GET
def export_view(request: SignedInRequest, connection_id: int) -> HttpResponse:
    connection = get_object_or_404(_connections(request), pk=connection_id)
    response = JsonResponse(services.mappings_export(connection), json_dumps_params={"indent": 2})
    response["Content-Disposition"] = f'attachment; filename="{connection.slug}-mappings.json"'
    return response


@permission_required(CONFIGURE)
@require_POST
def import_view(request: SignedInRequest, connection_id: int) -> HttpResponse:
    connection = get_object_or_404(_connections(request), pk=connection_id)
    upload = request.FILES.get("file")
    text = upload.read().decode("utf-8-sig") if upload else request.POST.get("document", "")
    try:
        document = json.loads(text)
        drafts = services.mappings_import(connection=connection, document=document, actor=request.user)
        messages.success(
            request, f"Imported {len(drafts)} mappings as drafts for {connection.name}: review and publish."
        )
    except ValueError as exc:
        messages.error(request, f"The file is not JSON: {exc}")
    except StudioError as exc:
        for problem in exc.problems:
            messages.error(request, str(problem))
    return redirect("studio:list")
