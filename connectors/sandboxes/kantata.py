"""Kantata OX (formerly Mavenlink) API v1, simulated: projects, tasks, time, expenses, invoices.

Speaks the protocol of VENDOR_APIS.md section 3 over HTTP, with its own SQLite store under
`state_dir` (so it survives a restart). It imports nothing of pscsync.

  POST /oauth/token                     client credentials (JSON, form or HTTP Basic) -> bearer token
  GET  /api/v1/users/me                 the user behind the token (what "Test connection" calls)
  GET  /api/v1/{collection}             index: `results` + keyed objects + `meta`, page/per_page
                                        (max 200) or limit/offset, only=, include=external_references,
                                        updated_after/created_after, workspace_id=, order=field:dir,
                                        external_reference_* filters (section 3.7)
  GET  /api/v1/{collection}/{id}        one object in the same envelope (404 when filtered out)
  POST /api/v1/{collection}             create: {"<singular>": {...}} or bulk {"<plural>": [...]};
                                        a nested "external_reference" is stored with the object
  PUT  /api/v1/{collection}/{id}        update (same body), DELETE removes
  PUT  /api/v1/invoices/{id}/cancel     cancel an invoice
  POST /api/v1/external_references      create or update one external reference (by subject and
                                        service_name); GET lists them
  GET  /api/v1/subscribed_events        the change log: every create/update/delete, 9-day window,
                                        created_after/created_before/event_types/only/include=subject
  GET  /api/v1/subscribed_events/event_types

Collections: workspaces, stories, participations, time_entries, expenses, invoices, users (read
only; three demo users are seeded). A `.json` suffix on any API path is accepted, as in Kantata's
doc examples. Errors are {"errors": [{"type", "message", "field"?}]}: 401 oauth, 422 validation,
404/400/429/5xx system.

Sandbox-only settings, sent as fault rules to /_sandbox/faults:
  {"duplicate_events": true}   every subscribed event is listed twice (Kantata warns of duplicates)
  {"reverse_events": true}     each page of subscribed events comes newest first (out of order)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from connectors.sandboxes.base import BadRequest, Request, Response, Sandbox
from connectors.sandboxes.base import serve as serve_sandbox

API = "/api/v1"
MAX_PER_PAGE = 200
DEFAULT_PER_PAGE = 20
EVENT_RETENTION_SECONDS = 9 * 24 * 3600
EVENTS = "subscribed_events"  # the events channel in the store
XREFS = "external_references"
ACCOUNT_ADMIN_ID = "42"  # every client-credentials token acts as this account administrator
FIRST_ID = 5500  # ids count up from here, so they look like Kantata's (numeric strings)
# Kantata numbers objects across all its accounts, so two accounts never share an id. A second
# account's sandbox (the demo's German one) counts from here instead (see `serve`).
SECOND_ACCOUNT_FIRST_ID = 9_100_000


@dataclass(frozen=True)
class Kind:
    """One Kantata object type: how its bodies are wrapped, what it accepts and requires."""

    singular: str
    subject_type: str
    writable: tuple[str, ...]
    required: tuple[str, ...] = ()
    bulk_max: int = 0  # 0: no bulk create for this object
    defaults: dict[str, Any] = field(default_factory=dict)
    filters: tuple[str, ...] = ("workspace_id",)

    @property
    def event_prefix(self) -> str:
        return self.singular


KINDS: dict[str, Kind] = {
    "workspaces": Kind(
        "workspace",
        "Workspace",
        writable=(
            "title",
            "description",
            "budgeted",
            "price",
            "currency",
            "start_date",
            "due_date",
            "creator_role",
            "archived",
        ),
        required=("title",),
        defaults={
            "description": "",
            "budgeted": False,
            "price": None,
            "currency": "USD",
            "start_date": None,
            "due_date": None,
            "creator_role": "maven",
            "archived": False,
        },
        filters=(),
    ),
    "stories": Kind(
        "story",
        "Story",
        writable=(
            "workspace_id",
            "title",
            "description",
            "story_type",
            "parent_id",
            "start_date",
            "due_date",
            "state",
            "billable",
            "fixed_fee",
            "time_estimate_in_minutes",
            "budget_estimate_in_cents",
        ),
        required=("workspace_id", "title"),
        bulk_max=300,
        defaults={
            "description": "",
            "story_type": "task",
            "parent_id": None,
            "start_date": None,
            "due_date": None,
            "state": "not started",
            "billable": True,
            "fixed_fee": None,
            "time_estimate_in_minutes": None,
            "budget_estimate_in_cents": None,
        },
        filters=("workspace_id", "story_type", "state", "parent_id"),
    ),
    "participations": Kind(
        "participation",
        "Participation",
        writable=("workspace_id", "user_id", "role"),
        required=("workspace_id", "user_id"),
        bulk_max=100,
        defaults={"role": "maven"},
        filters=("workspace_id", "user_id", "role"),
    ),
    "time_entries": Kind(
        "time_entry",
        "TimeEntry",
        writable=(
            "workspace_id",
            "story_id",
            "user_id",
            "date_performed",
            "time_in_minutes",
            "billable",
            "notes",
            "rate_in_cents",
            "cost_rate_in_cents",
            "approved",
        ),
        required=("workspace_id", "date_performed", "time_in_minutes"),
        bulk_max=100,
        defaults={
            "story_id": None,
            "notes": "",
            "rate_in_cents": 0,
            "cost_rate_in_cents": 0,
            "approved": False,
            "is_invoiced": False,
        },
        filters=("workspace_id", "story_id", "user_id", "approved", "billable", "is_invoiced"),
    ),
    "expenses": Kind(
        "expense",
        "Expense",
        writable=(
            "workspace_id",
            "date",
            "category",
            "expense_category_id",
            "amount_in_cents",
            # The workspace's currency unless the expense was incurred in another (a trip abroad).
            "currency",
            "notes",
            "billable",
            "reimbursable",
            "approved",
        ),
        required=("workspace_id", "date", "category", "amount_in_cents"),
        bulk_max=100,
        defaults={
            "expense_category_id": None,
            "notes": "",
            "billable": True,
            "reimbursable": True,
            "approved": False,
            "is_invoiced": False,
        },
        filters=("workspace_id", "approved", "billable", "is_invoiced"),
    ),
    "invoices": Kind(
        "invoice",
        "Invoice",
        writable=(
            "workspace_id",
            "invoice_date",
            "due_date",
            "payment_schedule",
            "draft",
            "status",
            "tax_rate",
            "user_invoice_number",
            "title",
            "message",
            "purchase_order",
            "project_code",
            "time_entry_ids",
            "expense_ids",
        ),
        required=("workspace_id",),
        defaults={
            "payment_schedule": 30,
            "draft": True,
            "status": "new",
            "tax_rate": 0,
            "title": "",
            "message": "",
            "purchase_order": "",
            "project_code": "",
            "time_entry_ids": [],
            "expense_ids": [],
        },
        filters=("workspace_id", "status"),
    ),
    "users": Kind("user", "User", writable=(), filters=()),
}
SUBJECT_COLLECTIONS = {kind.subject_type: name for name, kind in KINDS.items()}
STORY_TYPES = {"task", "deliverable", "milestone", "issue"}
STORY_STATES = {"not started", "started", "needs feedback", "blocked", "completed"}
INVOICE_STATUSES = {"new", "accepted payment", "cancelled"}
ROLES = {"maven", "buyer"}
CREATOR_ROLES = {"maven", "consultant", "buyer", "client"}
ID_FIELDS = {"workspace_id", "story_id", "user_id", "parent_id", "expense_category_id"}
DATE_FIELDS = {"start_date", "due_date", "date_performed", "date", "invoice_date"}
WHOLE_NUMBERS = {
    "price",
    "time_in_minutes",
    "rate_in_cents",
    "cost_rate_in_cents",
    "amount_in_cents",
    "time_estimate_in_minutes",
    "budget_estimate_in_cents",
    "fixed_fee",
    "payment_schedule",
}
XREF_FIELDS = (
    "service_name",
    "service_model",
    "service_model_ref",
    "status",
    "external_message",
    "external_link",
    "external_status",
    "locked",
)
SEED_USERS = (
    {"id": "42", "full_name": "Alex Admin", "email_address": "alex.admin@example.com", "account_role": "admin"},
    {"id": "43", "full_name": "Priya Consultant", "email_address": "priya@example.com", "account_role": "member"},
    {"id": "44", "full_name": "Sam Engineer", "email_address": "sam@example.com", "account_role": "member"},
)


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat(timespec="seconds")


def humanise(name: str) -> str:
    return name.replace("_", " ").capitalize()


def invalid(field_name: str, message: str) -> BadRequest:
    """Kantata answers validation failures with 422, type "validation" and the field."""
    return BadRequest(message, status=422, field_name=field_name)


def parse_time(name: str, value: str) -> float:
    try:
        parsed = dt.datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 date or time, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def truthy(value: str) -> bool:
    return value.lower() in {"true", "1", "yes"}


class KantataSandbox(Sandbox):
    name = "kantata"
    token_lifetime = 7200.0  # Kantata's own tokens do not expire; ours do, so refresh is exercised

    def __init__(self, state_dir: Path | None, first_id: int = FIRST_ID) -> None:
        super().__init__(state_dir)
        self.first_id = first_id
        with self.store.lock:
            # Expression indexes so a lookup by external reference stays fast as the account grows.
            self.store.db.execute(
                "CREATE INDEX IF NOT EXISTS kantata_xref_ref ON records "
                "(object, json_extract(data, '$.service_model_ref'))"
            )
            self.store.db.execute(
                "CREATE INDEX IF NOT EXISTS kantata_xref_subject ON records "
                "(object, json_extract(data, '$.subject_id'))"
            )
        self.next_id = int(self.store.kv_get("kantata_next_id", first_id))
        self.seed()

    def seed(self) -> None:
        if self.store.count("users"):
            return
        now = iso(time.time())
        for user in SEED_USERS:
            self.store.put("users", user["id"], {**user, "created_at": now, "updated_at": now})

    # Vendor shapes ----------------------------------------------------------------------------
    def error(self, status: int, message: str, *, code: str = "", field_name: str = "") -> Response:
        if status == 400 and field_name:
            status = 422  # a rejection about one field is a validation failure in Kantata's terms
        kind = {401: "oauth", 422: "validation"}.get(status, "system")
        entry: dict[str, str] = {"type": kind, "message": message}
        if field_name:
            entry["field"] = field_name
        return Response(status, {"errors": [entry]})

    def unauthorised(self) -> Response:
        return Response(401, {"errors": [{"type": "oauth", "message": "Invalid OAuth 2 Request"}]})

    def rate_limited(self, retry_after: int) -> Response:
        body = {"errors": [{"type": "system", "message": "Too many requests. Please wait a little and try again."}]}
        return Response(429, body, {"Retry-After": str(retry_after)})

    def handle(self, request: Request) -> Response | None:
        if request.path.endswith(".json"):  # doc examples use /workspaces.json; the spec omits it
            request.path = request.path.removesuffix(".json")
        return super().handle(request)

    def _reset(self, request: Request) -> Response:
        answer = super()._reset(request)
        with self.store.lock:
            self.next_id = self.first_id
        self.seed()  # the demo users come back with a fresh account
        return answer

    # Routes -----------------------------------------------------------------------------------
    def setup_routes(self) -> None:
        self.route("POST", r"/oauth/token", self.token, auth=False)
        self.route("GET", rf"{API}/users/me", self.me)
        self.route("GET", rf"{API}/subscribed_events/event_types", self.event_types)
        self.route("GET", rf"{API}/subscribed_events", self.subscribed_events)
        self.route("POST", rf"{API}/external_references", self.external_reference_save)
        self.route("GET", rf"{API}/external_references", self.external_reference_index)
        self.route("PUT", rf"{API}/invoices/(?P<id>[^/]+)/cancel", self.invoice_cancel)
        self.route("GET", rf"{API}/(?P<collection>[a-z_]+)", self.index)
        self.route("POST", rf"{API}/(?P<collection>[a-z_]+)", self.create)
        self.route("GET", rf"{API}/(?P<collection>[a-z_]+)/(?P<id>[^/]+)", self.show)
        self.route("PUT", rf"{API}/(?P<collection>[a-z_]+)/(?P<id>[^/]+)", self.update)
        self.route("DELETE", rf"{API}/(?P<collection>[a-z_]+)/(?P<id>[^/]+)", self.destroy)

    def token(self, request: Request) -> Response:
        """OAuth 2 token endpoint (Doorkeeper-style answers, RFC 6749 error bodies)."""
        params: dict[str, Any] = {}
        if request.body:
            if "json" in request.header("content-type"):
                try:
                    params = json.loads(request.body)
                except ValueError:
                    params = {}
                params = params if isinstance(params, dict) else {}
            else:
                params = {k: v[0] for k, v in parse_qs(request.body.decode(errors="replace")).items()}
        params.update({k: v[0] for k, v in request.query.items() if k not in params})
        basic = request.header("authorization")
        if basic.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
                params.setdefault("client_id", client_id)
                params.setdefault("client_secret", secret)
            except (ValueError, UnicodeDecodeError):
                pass
        grant = params.get("grant_type")
        if grant != "client_credentials":
            return Response(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "The authorization grant type is not supported by the authorization server.",
                },
            )
        if params.get("client_id") != self.client_id or params.get("client_secret") != self.client_secret:
            return Response(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "Client authentication failed due to unknown client, no client "
                    "authentication included, or unsupported authentication method.",
                },
            )
        value, lifetime = self.issue_token(params["client_id"])
        return Response(
            200,
            {
                "access_token": value,
                "token_type": "Bearer",
                "expires_in": int(lifetime),
                "scope": "",
                "created_at": int(time.time()),
            },
        )

    def me(self, request: Request) -> Response:
        return Response(200, self.envelope("users", [self.store.get("users", ACCOUNT_ADMIN_ID) or {}]))

    # Reading ----------------------------------------------------------------------------------
    def kind(self, request: Request) -> tuple[str, Kind]:
        name = request.params["collection"]
        if name not in KINDS:
            raise BadRequest(f"No route matches {request.path!r}: Kantata has no {name!r} objects", status=404)
        return name, KINDS[name]

    def index(self, request: Request) -> Response:
        name, kind = self.kind(request)
        records = self.matching(name, kind, request)
        page, meta = self.paginate(records, request)
        extra = self.side_loads(name, page, request)
        return Response(200, self.envelope(name, page, meta=meta, extra=extra))

    def show(self, request: Request) -> Response:
        name, kind = self.kind(request)
        record = self.store.get(name, request.params["id"])
        if record is None or (name == "workspaces" and record.get("archived") and not self.wants_archived(request)):
            raise BadRequest(f"{kind.subject_type} {request.params['id']} could not be found", status=404)
        return Response(200, self.envelope(name, [record], extra=self.side_loads(name, [record], request)))

    def wants_archived(self, request: Request) -> bool:
        return truthy(request.arg("include_archived", "") or "")

    def matching(self, name: str, kind: Kind, request: Request) -> list[dict[str, Any]]:
        """The records an index request selects, in its order (default: by id, oldest first)."""
        ids: set[str] | None = None
        if request.arg("only"):
            ids = {i.strip() for i in (request.arg("only") or "").split(",") if i.strip()}
        by_ref = self.xref_filter(kind, request)
        if by_ref is not None:
            ids = by_ref if ids is None else ids & by_ref
        records = self.load(name, ids)
        if name == "workspaces" and not self.wants_archived(request) and not request.arg("only"):
            records = [r for r in records if not r.get("archived")]
        for field_name in kind.filters:
            wanted = request.arg(field_name)
            if wanted is not None:
                records = [r for r in records if self.same(r.get(field_name), wanted)]
        for param, column in (("updated_after", "updated_at"), ("created_after", "created_at")):
            if request.arg(param):
                after = parse_time(param, request.arg(param) or "")
                records = [r for r in records if parse_time(column, r[column]) > after]
        without = request.arg("without_external_reference_service_name")
        has_refs = request.arg("has_external_references")
        if without or has_refs is not None:
            refs = self.xrefs_of(kind, [r["id"] for r in records])
            if without:
                records = [r for r in records if not any(x["service_name"] == without for x in refs.get(r["id"], []))]
            if has_refs is not None:
                records = [r for r in records if bool(refs.get(r["id"])) == truthy(has_refs)]
        return self.ordered(records, request.arg("order") or "id:asc")

    @staticmethod
    def same(value: Any, wanted: str) -> bool:
        if isinstance(value, bool):
            return value == truthy(wanted)
        return str(value) == wanted

    @staticmethod
    def ordered(records: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
        field_name, _, direction = order.partition(":")
        if field_name not in {"id", "created_at", "updated_at", "title", "date_performed", "date"}:
            raise BadRequest(f"cannot order by {field_name!r}")

        def key(record: dict[str, Any]) -> tuple[Any, int]:
            value = record.get(field_name)
            return (int(value) if field_name == "id" else str(value or ""), int(record["id"]))

        return sorted(records, key=key, reverse=direction.lower() == "desc")

    def paginate(self, records: list[dict[str, Any]], request: Request) -> tuple[list[dict[str, Any]], dict[str, int]]:
        def whole(name: str, default: int) -> int:
            raw = request.arg(name)
            if raw in (None, ""):
                return default
            try:
                value = int(raw)
            except ValueError:
                raise BadRequest(f"{name} must be a whole number, got {raw!r}") from None
            if value < (0 if name == "offset" else 1):
                raise BadRequest(f"{name} must be positive, got {value}")
            return value

        total = len(records)
        if request.arg("limit") is not None and request.arg("offset") is not None:
            # Both given: page/per_page are ignored (Kantata's Pagination section).
            size, offset = min(whole("limit", DEFAULT_PER_PAGE), MAX_PER_PAGE), whole("offset", 0)
            number = offset // size + 1
        else:
            size = min(whole("per_page", DEFAULT_PER_PAGE), MAX_PER_PAGE)
            number = whole("page", 1)
            offset = (number - 1) * size
        meta = {"count": total, "page_count": math.ceil(total / size), "page_number": number, "page_size": size}
        return records[offset : offset + size], meta

    def envelope(
        self,
        name: str,
        records: list[dict[str, Any]],
        *,
        meta: dict[str, int] | None = None,
        extra: dict[str, dict[str, Any]] | None = None,
        results: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        """Kantata's envelope: count, results pointers in order, one keyed map per type, meta."""
        meta = meta or {"count": len(records), "page_count": 1, "page_number": 1, "page_size": len(records)}
        body: dict[str, Any] = {
            "count": meta["count"],
            "results": results if results is not None else [{"key": name, "id": r["id"]} for r in records],
            name: {r["id"]: r for r in records},
            "meta": meta,
        }
        for other, objects in (extra or {}).items():
            body.setdefault(other, {}).update(objects)
        return body

    def side_loads(self, name: str, records: list[dict[str, Any]], request: Request) -> dict[str, dict[str, Any]]:
        includes = {i.strip() for i in (request.arg("include") or "").split(",") if i.strip()}
        extra: dict[str, dict[str, Any]] = {}
        if "external_references" in includes and name in KINDS:
            refs = self.xrefs_of(KINDS[name], [r["id"] for r in records])
            extra[XREFS] = {}
            for record in records:
                mine = refs.get(record["id"], [])
                record["external_reference_ids"] = [x["id"] for x in mine]
                extra[XREFS].update({x["id"]: x for x in mine})
        return extra

    def load(self, name: str, ids: set[str] | None) -> list[dict[str, Any]]:
        if ids is None:
            return self.store.all(name)
        found = []
        for record_id in ids:
            record = self.store.get(name, record_id)
            if record is not None:
                found.append(record)
        return found

    # External references ----------------------------------------------------------------------
    def xref_filter(self, kind: Kind, request: Request) -> set[str] | None:
        """Subject ids selected by the external_reference_* filters, or None when none is given."""
        service_name = request.arg("external_reference_service_name")
        service_model = request.arg("external_reference_service_model")
        refs = [r for r in (request.arg("external_reference_service_model_refs") or "").split(",") if r]
        if request.arg("external_reference_service_model_ref"):
            refs.append(request.arg("external_reference_service_model_ref") or "")
        if not (service_name or service_model or refs):
            return None
        if len(refs) > MAX_PER_PAGE:
            raise BadRequest(f"at most {MAX_PER_PAGE} external_reference_service_model_refs at a time")
        with self.store.lock:
            if refs:
                marks = ",".join("?" * len(refs))
                rows = self.store.db.execute(
                    "SELECT data FROM records WHERE object = ? "  # noqa: S608  # nosec B608  # only placeholders are interpolated
                    f"AND json_extract(data, '$.service_model_ref') IN ({marks})",
                    (XREFS, *refs),
                ).fetchall()
            else:
                rows = self.store.db.execute("SELECT data FROM records WHERE object = ?", (XREFS,)).fetchall()
        ids = set()
        for (data,) in rows:
            ref = json.loads(data)
            if ref["subject_type"] != kind.subject_type:
                continue
            if service_name and ref["service_name"] != service_name:
                continue
            if service_model and ref["service_model"] != service_model:
                continue
            ids.add(ref["subject_id"])
        return ids

    def xrefs_of(self, kind: Kind, subject_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        with self.store.lock:
            for subject_id in subject_ids:
                rows = self.store.db.execute(
                    "SELECT data FROM records WHERE object = ? AND json_extract(data, '$.subject_id') = ?",
                    (XREFS, subject_id),
                ).fetchall()
                for (data,) in rows:
                    ref = json.loads(data)
                    if ref["subject_type"] == kind.subject_type:
                        found.setdefault(subject_id, []).append(ref)
        return found

    def xref_build(
        self, body: Any, *, subject_type: str, subject_id: str, path: str = "external_reference"
    ) -> tuple[dict[str, Any], bool]:
        """The external reference to store for a subject (create or update by service_name)."""
        if not isinstance(body, dict):
            raise invalid(path, "external_reference must be an object")
        for required in ("service_name", "service_model", "service_model_ref"):
            if not body.get(required):
                raise invalid(f"{path}.{required}", f"{humanise(required)} can't be blank")
        existing = self.xrefs_of(KINDS[SUBJECT_COLLECTIONS[subject_type]], [subject_id]).get(subject_id, [])
        same = [x for x in existing if x["service_name"] == body["service_name"]]
        now = iso(time.time())
        if same:
            ref = dict(same[0])
            created = False
        else:
            ref = {
                "id": self.new_id(),
                "subject_type": subject_type,
                "subject_id": subject_id,
                "status": "pending",
                "external_message": None,
                "external_link": None,
                "external_status": None,
                "locked": False,
                "created_at": now,
            }
            created = True
        ref.update({k: (str(v) if k == "service_model_ref" else v) for k, v in body.items() if k in XREF_FIELDS})
        ref["updated_at"] = now
        return ref, created

    def external_reference_index(self, request: Request) -> Response:
        refs = self.store.all(XREFS)
        for name in ("subject_type", "subject_id", "service_name", "service_model", "service_model_ref"):
            wanted = request.arg(name)
            if wanted is not None:
                refs = [r for r in refs if str(r.get(name)) == wanted]
        page, meta = self.paginate(self.ordered(refs, request.arg("order") or "id:asc"), request)
        return Response(200, self.envelope(XREFS, page, meta=meta))

    def external_reference_save(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("external_reference"), dict):
            raise BadRequest('the body must be {"external_reference": {...}}')
        given = body["external_reference"]
        subject_type = str(given.get("subject_type") or "")
        subject_id = str(given.get("subject_id") or "")
        if subject_type not in SUBJECT_COLLECTIONS:
            raise invalid("subject_type", f"Subject type {subject_type!r} is not a Kantata object")
        if not self.store.get(SUBJECT_COLLECTIONS[subject_type], subject_id):
            raise invalid("subject_id", f"{subject_type} {subject_id} could not be found")
        ref, created = self.xref_build(given, subject_type=subject_type, subject_id=subject_id)
        self.commit([(XREFS, ref, created, {}, None)])
        self.journal_write(request, 200, f"external_reference:{ref['service_model_ref']}", created)
        return Response(200, self.envelope(XREFS, [ref]))

    # Writing ----------------------------------------------------------------------------------
    def new_id(self) -> str:
        """The next object id. Kept in memory and saved with each commit (an id burnt by a failed
        validation is simply skipped, as in a database sequence)."""
        with self.store.lock:
            self.next_id += 1
            return str(self.next_id)

    def fields_of(self, kind: Kind, given: Any, *, index: int | None = None) -> dict[str, Any]:
        where = kind.singular if index is None else f"{kind.singular}[{index}]"
        if not isinstance(given, dict):
            raise BadRequest(f"{where} must be an object")
        # Rails-style strong parameters: attributes Kantata does not accept are dropped silently.
        fields = {k: v for k, v in given.items() if k in kind.writable}
        for name in list(fields):
            value = fields[name]
            if name in ID_FIELDS and value is not None:
                fields[name] = str(value)
            if name in WHOLE_NUMBERS and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise invalid(name, f"{humanise(name)} must be a whole number")
            if name in DATE_FIELDS and value is not None:
                try:
                    dt.date.fromisoformat(str(value))
                except ValueError:
                    raise invalid(name, f"{humanise(name)} is not a valid date (use YYYY-MM-DD)") from None
        return fields

    def validate(self, name: str, kind: Kind, record: dict[str, Any]) -> None:
        for required in kind.required:
            if record.get(required) in (None, ""):
                if name == "workspaces" and required == "title":
                    raise invalid("title", "Please give your project a title")
                raise invalid(required, f"{humanise(required)} can't be blank")
        if "workspace_id" in kind.required and not self.store.get("workspaces", record["workspace_id"]):
            raise invalid("workspace_id", f"Workspace {record['workspace_id']} could not be found")
        if record.get("user_id") and not self.store.get("users", record["user_id"]):
            raise invalid("user_id", f"User {record['user_id']} could not be found")
        if record.get("story_id") and not self.store.get("stories", record["story_id"]):
            raise invalid("story_id", f"Story {record['story_id']} could not be found")
        checks: list[tuple[str, set[str]]] = [
            ("story_type", STORY_TYPES),
            ("state", STORY_STATES),
            ("role", ROLES),
            ("creator_role", CREATOR_ROLES),
        ]
        if name == "invoices":
            checks.append(("status", INVOICE_STATUSES))
        for field_name, allowed in checks:
            if field_name in record and record[field_name] not in allowed:
                raise invalid(field_name, f"{humanise(field_name)} must be one of: {', '.join(sorted(allowed))}")
        if name == "time_entries" and record["time_in_minutes"] <= 0:
            raise invalid("time_in_minutes", "Time in minutes must be greater than 0")
        if name == "time_entries" and record["time_in_minutes"] > 24 * 60:
            raise invalid("time_in_minutes", "Time in minutes cannot exceed 24 hours in one day")
        if "currency" in record and (not isinstance(record["currency"], str) or len(record["currency"]) != 3):
            raise invalid("currency", "Currency must be a three-letter ISO 4217 code")

    def build(self, name: str, kind: Kind, fields: dict[str, Any]) -> dict[str, Any]:
        """A new record: defaults, then what was sent, then what Kantata derives."""
        now = iso(time.time())
        record: dict[str, Any] = {**kind.defaults, **fields}
        workspace = self.store.get("workspaces", str(record.get("workspace_id"))) or {}
        if name in {"time_entries", "expenses", "invoices"}:
            record.setdefault("currency", workspace.get("currency", "USD"))
        if name in {"time_entries", "expenses"}:
            record.setdefault("user_id", ACCOUNT_ADMIN_ID)
        if name == "time_entries" and "billable" not in fields:
            story = self.store.get("stories", str(record.get("story_id"))) or {}
            record["billable"] = story.get("billable", True)
        record.update({"id": self.new_id(), "created_at": now, "updated_at": now})
        return record

    def invoice_lines(self, record: dict[str, Any], writes: list[Any]) -> None:
        """Invoicing marks the time and expenses it covers, so nothing is billed twice."""
        total = 0
        for collection, ids_field in (("time_entries", "time_entry_ids"), ("expenses", "expense_ids")):
            ids = record.get(ids_field) or []
            if not isinstance(ids, list):
                raise invalid(ids_field, f"{humanise(ids_field)} must be a list of ids")
            record[ids_field] = [str(i) for i in ids]
            for item_id in record[ids_field]:
                item = self.store.get(collection, item_id)
                if item is None or item["workspace_id"] != record["workspace_id"]:
                    raise invalid(ids_field, f"{KINDS[collection].subject_type} {item_id} is not in this project")
                if item.get("is_invoiced"):
                    raise invalid(ids_field, f"{KINDS[collection].subject_type} {item_id} has already been invoiced")
                if collection == "time_entries":
                    total += round(item["time_in_minutes"] * item.get("rate_in_cents", 0) / 60)
                else:
                    total += item["amount_in_cents"]
                after = {**item, "is_invoiced": True, "updated_at": record["updated_at"]}
                writes.append((collection, after, False, {"is_invoiced": [False, True]}, item))
        record["balance_in_cents"] = total
        record["workspace_ids"] = [record["workspace_id"]]
        record.setdefault("invoice_date", record["created_at"][:10])
        if not record.get("due_date"):
            issued = dt.date.fromisoformat(record["invoice_date"])
            record["due_date"] = (issued + dt.timedelta(days=int(record["payment_schedule"] or 0))).isoformat()
        if not record.get("user_invoice_number"):
            record["user_invoice_number"] = f"INV-{record['id']}"

    def create(self, request: Request) -> Response:
        name, kind = self.kind(request)
        if not kind.writable:
            raise BadRequest(f"{kind.subject_type} objects cannot be created through the API", status=403)
        body = request.json()
        if not isinstance(body, dict):
            raise BadRequest(f'the body must be {{"{kind.singular}": {{...}}}}')
        if kind.singular in body:
            items, bulk = [body[kind.singular]], False
        elif name in body and kind.bulk_max:
            items, bulk = body[name], True
            if not isinstance(items, list) or not items:
                raise BadRequest(f"{name} must be a non-empty list")
            if len(items) > kind.bulk_max:
                raise BadRequest(f"at most {kind.bulk_max} {name} can be created at once")
        else:
            raise BadRequest(f'the body must be {{"{kind.singular}": {{...}}}}')
        writes: list[Any] = []
        created: list[tuple[dict[str, Any], str]] = []
        for index, item in enumerate(items):
            fields = self.fields_of(kind, item, index=index if bulk else None)
            record = self.build(name, kind, fields)
            self.validate(name, kind, record)
            if name == "invoices":
                self.invoice_lines(record, writes)
            writes.append((name, record, True, {}, None))
            key = ""
            if isinstance(item, dict) and item.get("external_reference") is not None:
                ref, _ = self.xref_build(item["external_reference"], subject_type=kind.subject_type, subject_id="-")
                ref["subject_id"] = record["id"]
                writes.append((XREFS, ref, True, {}, None))
                key = ref["service_model_ref"]
            created.append((record, key))
        self.commit(writes)
        for _record, key in created:
            self.journal_write(request, 200, key, True)
        return Response(200, self.envelope(name, [r for r, _ in created]))

    def update(self, request: Request) -> Response:
        name, kind = self.kind(request)
        before = self.store.get(name, request.params["id"])
        if before is None:
            raise BadRequest(f"{kind.subject_type} {request.params['id']} could not be found", status=404)
        if not kind.writable:
            raise BadRequest(f"{kind.subject_type} objects cannot be changed through the API", status=403)
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get(kind.singular), dict):
            raise BadRequest(f'the body must be {{"{kind.singular}": {{...}}}}')
        given = body[kind.singular]
        fields = self.fields_of(kind, given)
        if name == "invoices":
            for locked in ("time_entry_ids", "expense_ids", "workspace_id"):
                fields.pop(locked, None)  # lines are fixed once invoiced; cancel and re-invoice instead
        after = {**before, **fields}
        self.validate(name, kind, after)
        changes = {k: [before.get(k), v] for k, v in fields.items() if before.get(k) != v}
        writes: list[Any] = []
        key = ""
        if given.get("external_reference") is not None:
            ref, ref_created = self.xref_build(
                given["external_reference"], subject_type=kind.subject_type, subject_id=before["id"]
            )
            writes.append((XREFS, ref, ref_created, {}, None))
            key = ref["service_model_ref"]
        else:
            refs = self.xrefs_of(kind, [before["id"]]).get(before["id"], [])
            key = refs[0]["service_model_ref"] if refs else ""
        if changes:
            after["updated_at"] = iso(time.time())
            writes.append((name, after, False, changes, before))
        self.commit(writes)
        self.journal_write(request, 200, key, False)
        return Response(200, self.envelope(name, [after]))

    def invoice_cancel(self, request: Request) -> Response:
        before = self.store.get("invoices", request.params["id"])
        if before is None:
            raise BadRequest(f"Invoice {request.params['id']} could not be found", status=404)
        if before["status"] == "cancelled":
            raise invalid("status", "This invoice has already been cancelled")
        now = iso(time.time())
        after = {**before, "status": "cancelled", "updated_at": now}
        writes: list[Any] = [("invoices", after, False, {"status": [before["status"], "cancelled"]}, before)]
        # Cancelling releases the time and expenses so they can be invoiced again.
        for collection, ids_field in (("time_entries", "time_entry_ids"), ("expenses", "expense_ids")):
            for item_id in before.get(ids_field, []):
                item = self.store.get(collection, item_id)
                if item is not None:
                    released = {**item, "is_invoiced": False, "updated_at": now}
                    writes.append((collection, released, False, {"is_invoiced": [True, False]}, item))
        self.commit(writes)
        self.journal_write(request, 200, "", False)
        return Response(200, self.envelope("invoices", [after]))

    def destroy(self, request: Request) -> Response:
        name, kind = self.kind(request)
        record = self.store.get(name, request.params["id"])
        if record is None:
            raise BadRequest(f"{kind.subject_type} {request.params['id']} could not be found", status=404)
        if not kind.writable:
            raise BadRequest(f"{kind.subject_type} objects cannot be deleted through the API", status=403)
        refs = self.xrefs_of(kind, [record["id"]]).get(record["id"], [])
        with self.store.transaction() as db:
            db.execute("DELETE FROM records WHERE object = ? AND id = ?", (name, record["id"]))
            for ref in refs:
                db.execute("DELETE FROM records WHERE object = ? AND id = ?", (XREFS, ref["id"]))
            self.event(db, f"{kind.event_prefix}:deleted", kind, record, {}, record, deleted=True)
        self.journal_write(request, 204, refs[0]["service_model_ref"] if refs else "", False)
        return Response(204, None)

    def commit(self, writes: list[tuple[str, dict[str, Any], bool, dict[str, Any], dict[str, Any] | None]]) -> None:
        """Apply several writes and their change events in one SQLite transaction."""
        with self.store.transaction() as db:
            db.execute("INSERT OR REPLACE INTO kv (name, value) VALUES ('kantata_next_id', ?)", (str(self.next_id),))
            for name, record, created, changes, before in writes:
                now = time.time()
                seq = self.store.next_seq()
                data = json.dumps(record)
                if created:
                    db.execute(
                        "INSERT INTO records (object, id, data, created_at, updated_at, seq) VALUES (?, ?, ?, ?, ?, ?)",
                        (name, record["id"], data, now, now, seq),
                    )
                else:
                    db.execute(
                        "UPDATE records SET data = ?, updated_at = ?, seq = ? WHERE object = ? AND id = ?",
                        (data, now, seq, name, record["id"]),
                    )
                if name in KINDS:
                    verb = "created" if created else "updated"
                    self.event(db, f"{KINDS[name].event_prefix}:{verb}", KINDS[name], record, changes, before)

    def event(
        self,
        db: Any,
        event_type: str,
        kind: Kind,
        record: dict[str, Any],
        changes: dict[str, Any],
        before: dict[str, Any] | None,
        *,
        deleted: bool = False,
    ) -> None:
        now = time.time()
        data = {
            "event_type": event_type,
            "subject_type": kind.subject_type,
            "subject_id": record["id"],
            "subject_changed_at": record.get("updated_at") if not deleted else iso(now),
            "created_at": iso(now),
            "payload_changes": changes,
            "current_payload": None if deleted else record,
            "previous_payload": before,
        }
        db.execute("INSERT INTO events (channel, at, data) VALUES (?, ?, ?)", (EVENTS, now, json.dumps(data)))

    # Change log -------------------------------------------------------------------------------
    def subscribed_events(self, request: Request) -> Response:
        now = time.time()
        clauses = ["channel = ?", "at >= ?"]
        args: list[Any] = [EVENTS, now - EVENT_RETENTION_SECONDS]
        if request.arg("created_after"):
            clauses.append("at > ?")
            args.append(parse_time("created_after", request.arg("created_after") or ""))
        if request.arg("created_before"):
            clauses.append("at < ?")
            args.append(parse_time("created_before", request.arg("created_before") or ""))
        only = [i for i in (request.arg("only") or "").split(",") if i.strip().isdigit()]
        if only:
            clauses.append(f"seq IN ({','.join('?' * len(only))})")
            args.extend(int(i) for i in only)
        with self.store.lock:
            rows = self.store.db.execute(
                f"SELECT seq, data FROM events WHERE {' AND '.join(clauses)} ORDER BY seq",  # noqa: S608  # nosec B608  # fixed clauses
                args,
            ).fetchall()
        events = [{**json.loads(data), "id": str(seq)} for seq, data in rows]
        types = {t.strip() for t in (request.arg("event_types") or "").split(",") if t.strip()}
        if types:
            events = [e for e in events if e["event_type"] in types]
        if (request.arg("order") or "").endswith(":desc"):
            events.reverse()
        page, meta = self.paginate(events, request)
        pointers = [{"key": EVENTS, "id": e["id"]} for e in page]
        if self.faults.setting("reverse_events"):
            pointers.reverse()
        if self.faults.setting("duplicate_events"):
            pointers = [p for p in pointers for _ in (0, 1)]
        extra: dict[str, dict[str, Any]] = {}
        if "subject" in (request.arg("include") or ""):
            for event in page:
                collection = SUBJECT_COLLECTIONS.get(event["subject_type"], "")
                subject = self.store.get(collection, event["subject_id"]) if collection else None
                if subject is not None:
                    extra.setdefault(collection, {})[subject["id"]] = subject
        return Response(200, self.envelope(EVENTS, page, meta=meta, extra=extra, results=pointers))

    def event_types(self, request: Request) -> Response:
        types = [
            f"{kind.event_prefix}:{verb}"
            for name, kind in KINDS.items()
            if kind.writable
            for verb in ("created", "updated", "deleted")
        ]
        return Response(200, {"subscribed_event_types": types, "subscribed_event_type_schemas": {}})


def serve(*, port: int, state_dir: Path | None, host: str = "127.0.0.1", second_account: bool = False) -> None:
    """`second_account`: another Kantata account beside the first (ids from another range)."""
    first_id = SECOND_ACCOUNT_FIRST_ID if second_account else FIRST_ID
    serve_sandbox(KantataSandbox(state_dir, first_id=first_id), port=port, host=host)
