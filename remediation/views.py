"""Pages of the workbench. Thin: parse, select (scoped), call one service, render."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from connectors.models import Connection
from pscsync import clock, glossary
from pscsync.access import CONFIGURE, VIEW_HANDOFFS, WORK_EXCEPTIONS, permission_required, scope_queryset
from pscsync.csvsafe import SafeWriter
from pscsync.models import Handoff
from pscsync.selectors import handoff_get_for_user
from remediation import selectors, services
from remediation.fingerprints import placeholders
from remediation.forms import DocumentForm, ReasonForm, ResubmitForm
from remediation.models import BulkJob, Comment, ExceptionCause, HandoffException, SavedView
from remediation.services import ActionRefused, ResubmitMode


def _filter_query(f: selectors.InboxFilter, **override: str) -> str:
    values = {**{k: v for k, v in f.__dict__.items() if v}, **override}
    return urlencode({k: v for k, v in values.items() if v})


@permission_required(WORK_EXCEPTIONS)
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    # The API's filter set (GET /api/v1/exceptions/?tab=open&flow=...) over the same scope.
    f, found = selectors.inbox_read(request.user, request.GET)
    valid = not found.errors
    groups, totals = selectors.inbox_page(request.user, f) if valid else ([], {"handoffs": 0, "groups": 0, "money": []})
    context = {
        "groups": groups,
        "totals": totals,
        "f": f,
        "filters": found,
        "query": _filter_query(f),
        "tab_links": [(key, label, _filter_query(f, tab=key)) for key, label in selectors.TABS.items()],
        "choices": selectors.inbox_choices(request.user),
        "saved_views": SavedView.objects.select_related("created_by"),
        "can_configure": request.user.has_perm(CONFIGURE),
        "jobs": BulkJob.objects.filter(created_by=request.user)[:5],
    }
    status = 200 if valid else 400
    if request.htmx and not request.htmx.boosted:
        return render(request, "remediation/_groups.html", context, status=status)
    return render(request, "remediation/inbox.html", context, status=status)


def _refused_filter(found: Any) -> HttpResponse:
    """A filter the inbox cannot apply, said plainly (nothing is read, exported or started)."""
    return HttpResponse(
        f"This filter cannot be applied: {found.errors.as_text()}", status=400, content_type="text/plain"
    )


def _cause_for_user(request: HttpRequest, pk: int) -> ExceptionCause:
    """A cause, or 404 when none of its handoffs is visible to the user."""
    cause = get_object_or_404(ExceptionCause, pk=pk)
    if not scope_queryset(HandoffException.objects.filter(cause=cause), request.user).exists():
        from django.http import Http404

        raise Http404("no such cause")
    return cause


@permission_required(WORK_EXCEPTIONS)
@require_GET
def cause_items(request: HttpRequest, pk: int) -> HttpResponse:
    cause = _cause_for_user(request, pk)
    f, found = selectors.inbox_read(request.user, request.GET)
    if found.errors:
        return _refused_filter(found)
    matching = selectors.exception_items(request.user, f).filter(cause=cause)
    items = list(matching.select_related("handoff", "legal_entity", "assignee").order_by("opened_at")[:ITEMS_SHOWN])
    total = matching.count() if len(items) == ITEMS_SHOWN else len(items)
    context = {"items": items, "cause": cause, "total": total, "more": total > len(items)}
    return render(request, "remediation/_items.html", context)


ITEMS_SHOWN = 200
# Headers and values in the words of the pages (the glossary): a person opens this in a
# spreadsheet. Amounts stay plain numbers, next to their currency, so they can be summed.
EXPORT_COLUMNS = (
    "Handoff", "Flow", "Step", "Kind", "Status", "Business key", "Identifiers", "Customer", "Legal entity",
    "Amount", "Currency", "Connection", "Assignee", "Opened", "Last failed", "Cause",
)  # fmt: skip


@permission_required(WORK_EXCEPTIONS)
@require_GET
def export(request: HttpRequest) -> StreamingHttpResponse:
    """The handoffs the inbox filter matches, one CSV row each: only what the user may see.
    Cells that a spreadsheet would run as a formula are neutralised (pscsync.csvsafe)."""
    f, found = selectors.inbox_read(request.user, request.GET)
    if found.errors:
        return _refused_filter(found)
    rows = (
        selectors.exception_items(request.user, f)
        .select_related("handoff", "legal_entity", "connection", "assignee", "cause")
        .order_by("opened_at", "pk")
    )

    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = SafeWriter(Echo())

    def lines():
        yield writer.writerow(EXPORT_COLUMNS)
        for item in rows.iterator(chunk_size=2000):
            yield writer.writerow(_export_row(item))

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="workbench-{f.tab}.csv"'
    return response


def _export_row(item: HandoffException) -> list[object]:
    return [
        item.handoff_id,
        glossary.flow_name(item.flow),
        glossary.step_name(item.step_name) if item.step_name else "",
        glossary.error_kind_name(item.error_class),
        item.get_status_display(),
        item.handoff.business_key,
        "; ".join(f"{k}: {v}" for k, v in item.identifiers.items()),
        item.customer_name,
        item.legal_entity.name if item.legal_entity else "",
        "" if item.amount is None else item.amount,
        item.currency,
        item.connection.name if item.connection else "",
        item.assignee.get_username() if item.assignee else "",
        glossary.when_words(item.opened_at),
        glossary.when_words(item.last_failed_at),
        # The handoff's own message in full (the cause's is its fingerprint, with placeholders).
        glossary.error_words(services.failure_text(item.handoff) or item.cause.title or item.cause.message),
    ]


@permission_required(WORK_EXCEPTIONS)
@require_GET
def cause_detail(request: HttpRequest, pk: int) -> HttpResponse:
    cause = _cause_for_user(request, pk)
    items = (
        scope_queryset(HandoffException.objects.filter(cause=cause), request.user)
        .select_related("handoff", "legal_entity", "assignee")
        .order_by("status", "opened_at")[:200]
    )
    comments = scope_queryset(Comment.objects.filter(cause=cause, handoff__isnull=False), request.user)
    general = Comment.objects.filter(cause=cause, handoff__isnull=True)
    open_items = list(items)
    texts = [services.failure_text(i.handoff) for i in open_items if i.handoff.last_error_message]
    context = {
        "cause": cause,
        "items": open_items,
        "placeholders": placeholders(cause.message, texts),
        "roots": selectors.cause_roots(request.user, [cause.pk]).get(cause.pk, {}),
        "comments": sorted([*comments, *general], key=lambda c: c.created_at),
        "assignees": selectors.inbox_choices(request.user)["assignees"],
        "can_edit_runbook": request.user.has_perm(CONFIGURE),
    }
    return render(request, "remediation/cause.html", context)


@permission_required(WORK_EXCEPTIONS)
@require_POST
def cause_act(request: HttpRequest, pk: int) -> HttpResponse:
    cause = _cause_for_user(request, pk)
    action = request.POST.get("action", "")
    try:
        if action == "assign":
            username = request.POST.get("assignee", "")
            assignee = get_user_model().objects.filter(username=username).first() if username else None
            services.cause_assign(actor=request.user, cause=cause, assignee=assignee)
            messages.success(request, f"Assigned to {username or 'nobody'}.")
        elif action == "comment":
            services.comment_add(actor=request.user, cause=cause, body=request.POST.get("body", ""))
        elif action == "archive":
            until = request.POST.get("until", "")
            day = dt.date.fromisoformat(until) if until else None
            at = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) if day else None
            count = request.POST.get("occurrences", "")
            services.cause_archive(
                actor=request.user,
                cause=cause,
                until=at,
                occurrences=int(count) if count.isdigit() else None,
                reason=request.POST.get("reason", ""),
            )
            messages.success(request, "Archived: it comes back when the date passes or it happens again that often.")
        elif action == "unarchive":
            services.cause_unarchive(actor=request.user, cause=cause)
        elif action == "runbook":
            if not request.user.has_perm(CONFIGURE):
                raise PermissionDenied
            services.runbook_save(actor=request.user, cause=cause, fields=request.POST.dict())
            messages.success(request, "Runbook saved.")
        else:
            return HttpResponse("unknown action", status=400)
    except (ActionRefused, ValueError) as refused:
        messages.error(request, str(refused))
    back = request.POST.get("next", "")
    # The inbox's per-row assign comes back to the inbox as it was filtered (our own pages only).
    if back and url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=False):
        return redirect(back)
    return redirect("remediation:cause", pk=cause.pk)


# ---------------------------------------------------------------------------------------------
# One handoff
# ---------------------------------------------------------------------------------------------


@permission_required(VIEW_HANDOFFS)
@require_GET
def handoff(request: HttpRequest, pk: int) -> HttpResponse:
    from remediation.timeline import handoff_timeline

    handoff = handoff_get_for_user(user=request.user, pk=pk)
    context = handoff_timeline(handoff)
    context["can_act"] = request.user.has_perm(WORK_EXCEPTIONS)
    context["can_configure"] = request.user.has_perm(CONFIGURE)
    context["comments"] = Comment.objects.filter(handoff=handoff)
    context["reason_form"] = ReasonForm()
    context["assignees"] = selectors.inbox_choices(request.user)["assignees"] if context["can_act"] else []
    context.update(_compensation_context(handoff))
    return render(request, "remediation/handoff.html", context)


def _compensation_context(handoff: Handoff) -> dict[str, Any]:
    from remediation.models import Compensation

    return {
        "compensation_plan": services.compensation_plan(handoff),
        "compensation_refusal": services.compensation_refusal(handoff),
        "compensation": Compensation.objects.filter(handoff=handoff).first(),
    }


@permission_required(VIEW_HANDOFFS)
@require_GET
def handoff_compensation(request: HttpRequest, pk: int) -> HttpResponse:
    """The compensation card, polled while a worker runs it."""
    handoff = handoff_get_for_user(user=request.user, pk=pk)
    context = {"handoff": handoff, "can_act": request.user.has_perm(WORK_EXCEPTIONS), **_compensation_context(handoff)}
    return render(request, "remediation/_compensation.html", context)


@permission_required(WORK_EXCEPTIONS)
@require_POST
def handoff_compensate(request: HttpRequest, pk: int) -> HttpResponse:
    handoff = handoff_get_for_user(user=request.user, pk=pk)
    try:
        services.handoff_compensate(actor=request.user, handoff=handoff, reason=request.POST.get("reason", ""))
    except ActionRefused as refused:
        messages.error(request, str(refused))
        return redirect("remediation:handoff", pk=handoff.pk)
    messages.success(request, "Compensation started: a worker removes the records; this page shows the outcome.")
    return redirect("remediation:handoff", pk=handoff.pk)


@permission_required(WORK_EXCEPTIONS)
@require_http_methods(["GET", "POST"])
def handoff_resubmit(request: HttpRequest, pk: int) -> HttpResponse:
    """The retry dialog: choose how to resume, edit the read document, review the diff, confirm."""
    from remediation.timeline import resubmit_plan

    handoff = handoff_get_for_user(user=request.user, pk=pk)
    source = services.read_step(handoff)
    editable = source is not None and source.status == "succeeded" and isinstance(source.output, dict)
    document = source.output if editable else {}
    data = request.POST if request.method == "POST" else None
    form = ResubmitForm(data, initial={"mode": _mode_that_can_succeed(handoff, editable)})
    doc_form = DocumentForm(data, document=document, handoff=handoff, prefix="doc") if editable else None
    context: dict[str, Any] = {
        "handoff": handoff,
        "form": form,
        "doc_form": doc_form,
        "failing_fields": _failing_fields(handoff, doc_form),
        "plan": resubmit_plan(handoff),
        "diff": None,
    }
    if request.method == "GET":
        return render(request, "remediation/resubmit.html", context)
    if handoff.status != Handoff.Status.NEEDS_ATTENTION:
        form.add_error(None, f"This handoff is “{handoff.get_status_display()}”: there is nothing to resubmit.")
    if not form.is_valid():
        return render(request, "remediation/resubmit.html", context, status=400)
    mode = form.cleaned_data["mode"]
    edited = None
    if mode == ResubmitMode.EDIT:
        if doc_form is None:
            form.add_error("mode", "There is no read document to edit: re-map from the source instead.")
            return render(request, "remediation/resubmit.html", context, status=400)
        if not doc_form.is_valid():
            return render(request, "remediation/resubmit.html", context, status=400)
        diff = doc_form.changes()
        if not diff:
            form.add_error("mode", "Your edit changes nothing: edit a field, or resume with the stored payload.")
            return render(request, "remediation/resubmit.html", context, status=400)
        context["diff"] = [(path, old, new) for path, (old, new) in diff.items()]
        edited = doc_form.edited_document()
        problem = _check_edited(handoff, edited)
        if problem:
            form.add_error(None, f"The edited document would fail the flow's checks: {problem}")
            return render(request, "remediation/resubmit.html", context, status=400)
    # What the person reviewed: a change of choice or edit after the review is shown again first.
    reviewed = hashlib.sha256(json.dumps([mode, context["diff"]], default=str).encode()).hexdigest()[:16]
    if request.POST.get("confirm") != "yes" or request.POST.get("reviewed") != reviewed:
        if request.POST.get("confirm") == "yes":
            form.add_error(None, "You changed something after the review: check it again, then confirm.")
        context.update(review=True, reviewed=reviewed)
        return render(request, "remediation/resubmit.html", context)
    try:
        services.handoff_resubmit(
            actor=request.user, handoff=handoff, mode=mode, reason=form.cleaned_data["reason"], edited=edited
        )
    except ActionRefused as refused:
        messages.error(request, str(refused))
        return redirect("remediation:handoff", pk=handoff.pk)
    messages.success(request, "Resubmitted: it resumes at the failed step; finished steps are not sent again.")
    return redirect("remediation:handoff", pk=handoff.pk)


def _mode_that_can_succeed(handoff: Handoff, editable: bool) -> str:
    """The resubmit choice that can succeed for this kind of failure: a mapping error is fixed in
    the mapping, so re-map; bad source data is corrected in an edit (or at the source, then
    re-map); a temporary failure resumes with what was stored."""
    if handoff.last_error_class == "mapping":
        return ResubmitMode.REMAP
    if handoff.last_error_class == "validation":
        return ResubmitMode.EDIT if editable else ResubmitMode.REMAP
    return ResubmitMode.STORED


def _failing_fields(handoff: Handoff, doc_form: DocumentForm | None) -> set[str]:
    """The edit form's fields the failure named: the read document's paths the check stored with
    it (Handoff.failed_fields), never words found in its message."""
    if doc_form is None:
        return set()
    named = set(handoff.failed_fields or [])
    return {name for name, path in doc_form.paths.items() if path in named}


def _check_edited(handoff: Handoff, edited: dict[str, Any]) -> str:
    """Run the flow's check step (it calls no system to write) against the edited document."""
    from connectors.errors import ConnectorError
    from pscsync.flows import StepContext, flow_get
    from pscsync.flows.steps import CheckStep

    flow = flow_get(handoff.flow)
    if flow is None or len(flow.steps) < 2 or not isinstance(flow.steps[1], CheckStep):
        return ""
    ctx = StepContext(handoff=handoff, outputs={flow.steps[0].name: edited})
    try:
        flow.steps[1].check(ctx)
    except ConnectorError as exc:
        if exc.error_class in ("validation", "mapping"):
            return exc.message
        return ""  # the check could not reach a system: the run will tell
    except (KeyError, TypeError, ValueError) as exc:
        return f"the document is missing or mis-typed: {exc}"
    return ""


@permission_required(WORK_EXCEPTIONS)
@require_POST
def handoff_act(request: HttpRequest, pk: int) -> HttpResponse:
    handoff = handoff_get_for_user(user=request.user, pk=pk)
    action = request.POST.get("action", "")
    reason = request.POST.get("reason", "")
    try:
        if action == "resolve":
            services.handoff_resolve(actor=request.user, handoff=handoff, reason=reason)
            messages.success(request, "Resolved without a retry.")
        elif action == "cancel":
            services.handoff_cancel(actor=request.user, handoff=handoff, reason=reason)
            messages.success(request, "Cancelled.")
        elif action == "reopen":
            services.handoff_reopen(actor=request.user, handoff=handoff, reason=reason)
            messages.success(request, "Reopened: it is back in the workbench.")
        elif action == "assign":
            username = request.POST.get("assignee", "")
            assignee = get_user_model().objects.filter(username=username).first() if username else None
            services.handoff_assign(actor=request.user, handoff=handoff, assignee=assignee)
            messages.success(request, f"Assigned to {username or 'nobody'}.")
        elif action == "comment":
            item = HandoffException.objects.filter(handoff=handoff).select_related("cause").first()
            if item is None:
                raise ActionRefused("This handoff never needed a person: comment on it in its group.")
            services.comment_add(
                actor=request.user, cause=item.cause, handoff=handoff, body=request.POST.get("body", "")
            )
        else:
            return HttpResponse("unknown action", status=400)
    except ActionRefused as refused:
        messages.error(request, str(refused))
    return redirect("remediation:handoff", pk=handoff.pk)


# ---------------------------------------------------------------------------------------------
# Many at once
# ---------------------------------------------------------------------------------------------
@permission_required(WORK_EXCEPTIONS)
@require_POST
def bulk(request: HttpRequest) -> HttpResponse:
    """Make a job from the selection (handoffs, whole groups) or the whole filter."""
    f, found = selectors.inbox_read(request.user, request.POST)
    if found.errors:
        return _refused_filter(found)
    items = selectors.exception_items(request.user, f)
    if request.POST.get("scope") != "filter":
        causes = [int(c) for c in request.POST.getlist("cause") if c.isdigit()]
        handoffs = [int(h) for h in request.POST.getlist("handoff") if h.isdigit()]
        from django.db.models import Q

        items = items.filter(Q(cause_id__in=causes) | Q(handoff_id__in=handoffs))
    ids = list(items.values_list("handoff_id", flat=True)[: BULK_CAP + 1])
    if len(ids) > BULK_CAP:
        ids = ids[:BULK_CAP]
        messages.warning(
            request,
            f"The filter matches more than {BULK_CAP:,} handoffs: this job takes the first "
            f"{BULK_CAP:,}; start another for the rest once it is done.",
        )
    kind = request.POST.get("kind", "")
    if kind not in BulkJob.Kind.values or kind == BulkJob.Kind.REPLAY:
        return HttpResponse("unknown bulk action", status=400)
    if kind == BulkJob.Kind.RETRY and request.POST.get("confirmed") != "yes":
        warnings = selectors.retry_warnings(request.user, ids)
        if warnings:
            # Ask before sending back work that will fail the same way; nothing is started yet.
            fields = [(k, v) for k, values in request.POST.lists() if k not in ("csrfmiddlewaretoken",) for v in values]
            context = {"warnings": warnings, "fields": fields, "count": len(ids), "query": _filter_query(f)}
            return render(request, "remediation/bulk_confirm.html", context)
    params: dict[str, Any] = {"filter": _filter_query(f)}
    if kind == BulkJob.Kind.ASSIGN:
        assignee = get_user_model().objects.filter(username=request.POST.get("assignee", "")).first()
        params["assignee"] = assignee.pk if assignee else None
    try:
        job = services.bulk_job_create(
            actor=request.user, kind=kind, handoff_ids=ids, reason=request.POST.get("reason", ""), params=params
        )
    except ActionRefused as refused:
        messages.error(request, str(refused))
        return redirect(f"{reverse('remediation:inbox')}?{_filter_query(f)}")
    return redirect("remediation:job", pk=job.pk)


BULK_CAP = 20000  # one job's list of ids stays a reasonable JSON document


def _job_for_user(request: HttpRequest, pk: int) -> BulkJob:
    # Jobs are seen by whoever may work exceptions, but only when they could see every handoff in it.
    job = get_object_or_404(BulkJob, pk=pk)
    visible = scope_queryset(Handoff.objects.filter(pk__in=job.handoff_ids), request.user).count()
    if visible != len(job.handoff_ids):
        from django.http import Http404

        raise Http404("no such job")
    return job


@permission_required(WORK_EXCEPTIONS)
@require_GET
def job(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for_user(request, pk)
    context = {
        "job": job,
        "results": selectors.job_results(job),
        "result_names": selectors.RESULT_NAMES,
        "queue": selectors.job_queue_place(job) if job.status == BulkJob.Status.QUEUED else None,
    }
    if request.htmx:
        return render(request, "remediation/_job_progress.html", context)
    return render(request, "remediation/job.html", context)


@permission_required(WORK_EXCEPTIONS)
@require_POST
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    job = _job_for_user(request, pk)
    if not job.is_finished:
        services.bulk_job_cancel(actor=request.user, job=job)
        messages.success(request, "Cancel requested: the job stops before its next handoff.")
    return redirect("remediation:job", pk=job.pk)


@permission_required(WORK_EXCEPTIONS)
@require_http_methods(["GET", "POST"])
def replay(request: HttpRequest) -> HttpResponse:
    """Re-run what a connection's events in a window led to, after an outage or a fix: a preview
    of how many events and handoffs, then a tracked job (resubmit, re-reading the source)."""
    data = request.POST if request.method == "POST" else request.GET
    connections = Connection.objects.order_by("slug")
    context: dict[str, Any] = {"connections": connections, "values": data}
    slug = data.get("connection", "")
    start_text, end_text = data.get("start", ""), data.get("end", "")
    if slug and start_text and end_text:
        connection = connections.filter(slug=slug).first()
        try:
            start = dt.datetime.fromisoformat(start_text).replace(tzinfo=dt.UTC)
            end = dt.datetime.fromisoformat(end_text).replace(tzinfo=dt.UTC)
        except ValueError:
            context["error"] = "Give the window as dates and times (YYYY-MM-DDTHH:MM)."
            return render(request, "remediation/replay.html", context, status=400)
        if connection is None or end <= start:
            context["error"] = "Choose a connection and a window whose end is after its start."
            return render(request, "remediation/replay.html", context, status=400)
        scope = services.replay_scope(user=request.user, connection_id=connection.pk, start=start, end=end)
        context["preview"] = scope
        if request.method == "POST" and data.get("confirm") == "yes" and data.get("seen") != scope["fingerprint"]:
            context["error"] = "The window, or what it touches, changed since the preview: check the counts again."
            return render(request, "remediation/replay.html", context, status=409)
        if request.method == "POST" and data.get("confirm") == "yes":
            try:
                job = services.bulk_job_create(
                    actor=request.user,
                    kind=BulkJob.Kind.REPLAY,
                    handoff_ids=scope["handoff_ids"],
                    reason=data.get("reason", ""),
                    params={"connection": slug, "start": start.isoformat(), "end": end.isoformat()},
                )
            except ActionRefused as refused:
                context["error"] = str(refused)
                return render(request, "remediation/replay.html", context, status=400)
            return redirect("remediation:job", pk=job.pk)
    context["now"] = clock.now()
    return render(request, "remediation/replay.html", context)


@permission_required(WORK_EXCEPTIONS)
@require_POST
def saved_view_save(request: HttpRequest) -> HttpResponse:
    query = request.POST.get("query", "")
    try:
        services.saved_view_save(actor=request.user, name=request.POST.get("name", ""), query=query)
        messages.success(request, "View saved for the team.")
    except ActionRefused as refused:
        messages.error(request, str(refused))
    return redirect(f"{reverse('remediation:inbox')}?{query}")


@permission_required(WORK_EXCEPTIONS)
@require_POST
def saved_view_delete(request: HttpRequest, pk: int) -> HttpResponse:
    view = get_object_or_404(SavedView, pk=pk)
    try:
        services.saved_view_delete(actor=request.user, view=view)
        messages.success(request, f"View “{view.name}” removed.")
    except ActionRefused as refused:
        messages.error(request, str(refused))
    return redirect("remediation:inbox")
