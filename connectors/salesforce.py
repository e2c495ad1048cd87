"""Salesforce (the CRM) through its REST API: OAuth 2.0 client credentials, sObject upsert by
external id, SOQL with query-locator paging, Change Data Capture events for intake.

Credentials (connection.credentials()):
    {"client_id": "<connected app consumer key>", "client_secret": "<consumer secret>",
     "webhook_secrets": [{"secret": "whsec_...", "expires_at": "2026-12-01T00:00:00+00:00" | None}]}
connection.base_url is the org's My Domain URL (https://acme.my.salesforce.com), used both for
the token endpoint and for the API; connection.api_version is e.g. "v62.0" (blank: v62.0).

Writes are idempotent by business key: every synced object has the external id field
`pscsync_Key__c` (External ID, Unique) and every write is `PATCH /sobjects/{type}/pscsync_Key__c/{key}`,
which Salesforce itself turns into create-or-update, so no lock is needed around it.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import quote

from connectors import canonical as c
from connectors import holdings as h
from connectors import http
from connectors.base import Connector, InboundChange, Token, WriteResult
from connectors.errors import (
    ConnectorError,
    MappingError,
    RejectedError,
    TransientError,
    UnknownOutcomeError,
    WebhookRejected,
)
from connectors.schema import (
    BOOLEAN,
    DATE,
    DATETIME,
    NUMBER,
    NUMBER_OR_TEXT,
    PICKLIST,
    REFERENCE,
    TEXT,
    FieldShape,
    MalformedRecord,
    PayloadShape,
    RecordShape,
    payload_check,
    records_checked,
    sent,
    shape_of,
)

_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_OBJECT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SELECT = re.compile(r"^\s*SELECT\s+(.+?)\s+FROM\s+([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE | re.DOTALL)
_ID = re.compile(r"^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$")

# The opportunity and account fields a canonical deal is read from (docs/canonical.md).
OPPORTUNITY_FIELDS = (
    "Id",
    "Name",
    "AccountId",
    "StageName",
    "Probability",
    "CloseDate",
    "Amount",
    "CurrencyIsoCode",
    "IsWon",
    "IsClosed",
    "Legal_Entity__c",
    "Service_Line__c",
    "Billing_Model__c",
    "Contract_Start__c",
    "Contract_End__c",
    "Contract_Version__c",
    "PO_Number__c",
    "Resource_Plan__c",
    "Closed_At__c",
    "Account.Name",
    "Account.AccountNumber",
    "Account.BillingCountry",
    "Account.ParentId",
    "Account.Tax_Profile__c",
)
WON_DEAL_FIELDS = (
    "Id",
    "Name",
    "AccountId",
    "Amount",
    "CurrencyIsoCode",
    "CloseDate",
    "Contract_Version__c",
    "Legal_Entity__c",
    "LastModifiedDate",
    "Account.Name",
    "Account.Tax_Profile__c",
    "Service_Line__c",
    "Billing_Model__c",
)
# Opportunity fields a change event names -> the canonical deal fields triggers route on.
DEAL_FIELDS = {
    "StageName": c.DEAL_STAGE,
    "Probability": c.DEAL_PROBABILITY,
    "Amount": c.DEAL_AMOUNT,
    "CloseDate": c.DEAL_CLOSE_DATE,
    "Contract_Version__c": c.DEAL_CONTRACT_VERSION,
    "Contract_End__c": c.DEAL_CONTRACT_END,
}
# changeOrigin of a change caused by our own write (call_options_client below).
OWN_CLIENT = "client=pscsync"
CHANGE_ACTIONS = {"CREATE": "created", "UPDATE": "updated"}


# Salesforce's field types (describe's `type`) in our terms.
DESCRIBE_KINDS = {
    "double": NUMBER,
    "currency": NUMBER,
    "percent": NUMBER,
    "int": NUMBER,
    "long": NUMBER,
    "boolean": BOOLEAN,
    "date": DATE,
    "datetime": DATETIME,
    "reference": REFERENCE,
    "picklist": PICKLIST,
    "multipicklist": PICKLIST,
}
# The opportunity as a deal is read from it (docs/canonical.md): a value of another type (an admin
# turned Amount into text) is a validation error naming the field, not a lost amount or a crash.
OPPORTUNITY_SHAPE = {
    "Id": ((str,), True),
    "Name": ((str,), False),
    "StageName": ((str,), False),
    "Amount": (NUMBER_OR_TEXT, False),
    "Probability": (NUMBER_OR_TEXT, False),
    "CloseDate": ((str,), False),
    "CurrencyIsoCode": ((str,), False),
    "Contract_Version__c": (NUMBER_OR_TEXT, False),
    "Contract_Start__c": ((str,), False),
    "Contract_End__c": ((str,), False),
    "Closed_At__c": ((str,), False),
    "LastModifiedDate": ((str,), False),
    "AccountId": ((str,), False),
    "Legal_Entity__c": ((str,), False),
    "Account": ((dict,), False, {"Name": ((str,), False), "Tax_Profile__c": ((str,), False)}),
}
DESCRIBE_FIELD_SHAPE = {
    "name": ((str,), True),
    "type": ((str,), True),
    "nillable": ((bool,), False),
    "picklistValues": ((list,), False),
}
DESCRIBE_SHAPE = {"name": ((str,), True), "fields": ((list,), True, DESCRIBE_FIELD_SHAPE)}
# A query answer (one page of records) and the change events a poll pulls or a webhook pushes
# (CometD's message shape around a ChangeEventHeader).
QUERY_SHAPE: PayloadShape = {
    "records": ((list,), True, {}),
    "done": ((bool,), False),
    "nextRecordsUrl": ((str,), False),
}
CHANGE_EVENT_SHAPE = {
    "data": (
        (dict,),
        True,
        {
            "event": ((dict,), True, {"replayId": ((int, str), True), "EventUuid": ((str,), False)}),
            "payload": (
                (dict,),
                True,
                {
                    "ChangeEventHeader": (
                        (dict,),
                        True,
                        {
                            "entityName": ((str,), True),
                            "changeType": ((str,), True),
                            "recordIds": ((list,), True),
                            "commitTimestamp": ((int,), True),
                            "changedFields": ((list,), False),
                            "changeOrigin": ((str,), False),
                        },
                    ),
                },
            ),
        },
    ),
}
PULL_SHAPE: PayloadShape = {"messages": ((list,), True, {}), "latestReplayId": ((int, str), False)}


class SalesforceConnector(Connector):
    vendor = "salesforce"
    # My Domain hosts (the token endpoint too); Certinia runs in the same org, so it inherits them.
    api_hosts = ("*.my.salesforce.com", "*.salesforce.com", "*.force.com")
    default_api_version = "v62.0"
    # The external id field the connector upserts by, and per-object exceptions to it.
    external_id_field = "pscsync_Key__c"
    external_id_fields: ClassVar[dict[str, str]] = {}
    # Friendly entity names the flows may use, and the words used in messages.
    entity_aliases: ClassVar[dict[str, str]] = {
        "account": "Account",
        "contact": "Contact",
        "opportunity": "Opportunity",
        "quote": "Quote",
        "contract": "Contract",
    }
    entity_labels: ClassVar[dict[str, str]] = {
        "Account": "account",
        "Contact": "contact",
        "Opportunity": "opportunity",
        "Quote": "quote",
        "Contract": "contract",
    }
    # What read() selects when the caller names no fields (there is no SELECT * in SOQL).
    default_fields: ClassVar[dict[str, tuple[str, ...]]] = {
        "Account": ("Id", "Name", "AccountNumber", "Type", "Industry", "BillingCountry", "CurrencyIsoCode", "ParentId"),
        "Contact": ("Id", "FirstName", "LastName", "Email", "AccountId"),
        "Opportunity": (
            "Id",
            "Name",
            "AccountId",
            "StageName",
            "CloseDate",
            "Amount",
            "Probability",
            "CurrencyIsoCode",
            "IsClosed",
            "IsWon",
        ),
    }
    # Declared shapes of the records read, by object (connectors/schema.py): each record a query
    # returns is checked against its object's, so a value of another type is a MalformedRecord
    # naming the field, not a crash where a flow reads it. An object not listed needs an Id.
    record_shapes: ClassVar[dict[str, PayloadShape]] = {
        "Opportunity": OPPORTUNITY_SHAPE,
        "Account": {"Id": ((str,), True), "Name": ((str,), False), "ParentId": ((str,), False)},
    }
    batch_size = 2000  # Sforce-Query-Options batchSize: records per page of a query
    # Client-credentials tokens carry no lifetime; the org's session timeout decides (2 h by
    # default). We assume that much and refresh on the 401 INVALID_SESSION_ID if it is shorter.
    assumed_session_seconds = 2 * 3600
    # Salesforce sends no Retry-After with REQUEST_LIMIT_EXCEEDED: wait this long when it has none.
    limit_retry_seconds = 900
    # Sent as Sforce-Call-Options so change events caused by our own writes carry
    # changeOrigin "...;client=pscsync" and can be told apart from users' changes.
    call_options_client = "pscsync"
    last_api_usage = ""  # the last Sforce-Limit-Info header: "api-usage=used/allowed"
    capabilities: ClassVar[dict[str, c.Capability]] = {
        c.DEAL: c.Capability(c.DEAL, "opportunity", c.can(c.READ_ONE, c.READ_CHANGED, c.UPDATE, c.RECONCILE)),
        c.CUSTOMER: c.Capability(c.CUSTOMER, "account", c.can(c.READ_ONE)),
        # Write-backs onto the opportunity a person made: by its own id.
        "deal_status": c.Capability(c.DEAL, "opportunity", c.can(c.UPDATE)),
        "deal_billing": c.Capability(c.DEAL, "opportunity", c.can(c.UPDATE)),
        "deal_amendment": c.Capability(c.DEAL, "opportunity", c.can(c.UPDATE)),
    }
    limits: ClassVar[c.Limits] = c.Limits(page_size=2000, bulk_size=200, max_concurrency=25)

    # Names -------------------------------------------------------------------------------------
    @property
    def api_version(self) -> str:
        version = (self.connection.api_version or self.default_api_version).strip()
        return version if version.startswith("v") else f"v{version}"

    def api_path(self, tail: str) -> str:
        return f"/services/data/{self.api_version}/{tail.lstrip('/')}"

    def sobject(self, entity: str) -> str:
        name = self.entity_aliases.get(entity, self.entity_aliases.get(entity.lower(), entity))
        if not _OBJECT_NAME.match(name):
            raise MappingError(f"{entity!r} is not a Salesforce object name")
        return name

    def label(self, sobject: str) -> str:
        return self.entity_labels.get(sobject, sobject)

    def external_id_field_for(self, sobject: str) -> str:
        return self.external_id_fields.get(sobject, self.external_id_field)

    # Auth -------------------------------------------------------------------------------------
    def fetch_token(self) -> Token:
        credentials = self.connection.credentials()
        form = {
            "grant_type": "client_credentials",
            "client_id": credentials.get("client_id", ""),
            "client_secret": credentials.get("client_secret", ""),
        }
        result = self._post_form(self.url("/services/oauth2/token"), form)
        body = result.body if isinstance(result.body, dict) else {}
        if result.status != 200 or not body.get("access_token"):
            reason = body.get("error_description") or body.get("error") or f"HTTP {result.status}"
            raise RejectedError(
                f"Salesforce refused the connection's client id and secret ({body.get('error', 'error')}: {reason}); "
                "check the connected app's consumer key and secret on this connection",
                http_status=result.status,
                response=body,
            )
        expires_in = body.get("expires_in")  # not sent for this flow today; honoured if it ever is
        lifetime = float(expires_in) if expires_in else self.assumed_session_seconds
        return Token(value=body["access_token"], expires_at=time.time() + lifetime)

    def _post_form(self, url: str, form: dict[str, str]) -> http.HttpResult:
        """POST a form-encoded body (OAuth token endpoints take no JSON), through the egress check."""
        return self.call("POST", url, data=form, accept_statuses=(400, 401))

    def auth_headers(self) -> dict[str, str]:
        return {
            **super().auth_headers(),
            "Accept": "application/json",
            "Sforce-Call-Options": f"client={self.call_options_client}",
        }

    def call(self, method: str, url: str, **kwargs: Any) -> http.HttpResult:
        """Salesforce throttles with 403 REQUEST_LIMIT_EXCEEDED rather than 429: that is a
        transient failure (retry later), while any other 403 is a permission problem."""
        accepted = tuple(kwargs.pop("accept_statuses", ()))
        result = super().call(method, url, accept_statuses=(*accepted, 403), **kwargs)
        self.last_api_usage = result.headers.get("sforce-limit-info", "")
        if result.status != 403 or 403 in accepted:
            return result
        if _error_code(result.body) == "REQUEST_LIMIT_EXCEEDED":
            retry_after = http.parse_retry_after(result.headers.get("retry-after"))
            raise TransientError(
                "Salesforce's API request limit is reached (403 REQUEST_LIMIT_EXCEEDED)",
                retry_after=retry_after if retry_after is not None else self.limit_retry_seconds,
                http_status=403,
                response=result.body,
            )
        raise RejectedError(
            f"Salesforce refused the request (403): {http.vendor_message(result.body)}",
            http_status=403,
            response=result.body,
        )

    def describe_error(self, error: ConnectorError) -> None:
        items = [i for i in error.response if isinstance(i, dict)] if isinstance(error.response, list) else []
        if not items:
            return
        explained = "; ".join(_explain(i) for i in items)
        if isinstance(error, TransientError):
            error.message = f"Salesforce is not taking requests right now: {explained}; pscsync will retry"
        elif isinstance(error, UnknownOutcomeError):
            error.message = (
                f"Salesforce failed while saving ({error.http_status}: {explained}); it may or may not have saved, "
                "so pscsync looks the record up before trying again"
            )
        else:
            error.message = f"Salesforce rejected the request: {explained}"
        error.args = (error.message,)

    def ping(self) -> None:
        self.send("GET", self.api_path("limits"))

    # Reading ----------------------------------------------------------------------------------
    def soql(
        self,
        entity: str,
        *,
        since: dt.datetime | None = None,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> str:
        """The SOQL for read(): the fields, the filters ANDed, oldest change first."""
        sobject = self.sobject(entity)
        chosen = list(fields or self.default_fields.get(sobject, ("Id", "Name")))
        for extra in ("Id", "LastModifiedDate"):
            if extra not in chosen:
                chosen.append(extra)
        conditions = []
        if since is not None:
            conditions.append(f"LastModifiedDate > {_literal(since)}")
        for name, value in (where or {}).items():
            _check_field(name)
            if isinstance(value, list | tuple | set | frozenset):
                conditions.append(f"{name} IN ({', '.join(_literal(v) for v in value)})")
            else:
                conditions.append(f"{name} = {_literal(value)}")
        for name in chosen:
            _check_field(name)
        text = f"SELECT {', '.join(chosen)} FROM {sobject}"  # noqa: S608  # nosec B608  # SOQL; names checked, values quoted
        if conditions:
            text += " WHERE " + " AND ".join(conditions)
        return text + " ORDER BY LastModifiedDate, Id"

    def read(
        self,
        entity: str,
        *,
        since: dt.datetime | None = None,
        where: dict[str, Any] | None = None,
        fields: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every matching record, page after page (Salesforce's query locator), without the
        `attributes` blocks."""
        yield from self.query(self.soql(entity, since=since, where=where, fields=fields))

    def query(self, soql: str) -> Iterator[dict[str, Any]]:
        """Every record the SOQL selects, page after page, each checked against its object's
        declared shape (the object named after FROM: our own query, so its form is known)."""
        parts = _SELECT.search(soql)
        name = parts.group(2) if parts else ""
        # A field the query did not select is not missing: only selected fields may be required.
        selected = {f.strip() for f in parts.group(1).split(",")} if parts else set()
        shape = {
            field: (spec[0], spec[1] and field in selected, *spec[2:])
            for field, spec in self.record_shapes.get(name, {"Id": ((str,), True)}).items()
        }
        what = sent("Salesforce", self.label(name) if name else "record")
        headers = {"Sforce-Query-Options": f"batchSize={self.batch_size}"}
        result = self.send("GET", self.api_path("query"), params={"q": soql}, headers=headers)
        while True:
            page = payload_check(result.body, QUERY_SHAPE, what="Salesforce sent a query answer")
            for record in page["records"]:
                yield payload_check(_plain(record), shape, what=f"{what} ({record.get('Id') or 'no id'})")
            next_url = page.get("nextRecordsUrl")
            if page.get("done", True) or not next_url:
                return
            result = self.send("GET", next_url, headers=headers)

    # Writing ----------------------------------------------------------------------------------
    def _key_path(self, sobject: str, key: str) -> str:
        # Keys are quoted whole: a "/" in a key must not become a path separator. Salesforce may
        # read a key ending in ".xyz" as a file extension (documented): keep dots out of keys.
        field = self.external_id_field_for(sobject)
        return self.api_path(f"sobjects/{sobject}/{field}/{quote(key, safe='')}")

    def upsert(self, *, entity: str, key: str, fields: dict[str, Any]) -> WriteResult:
        sobject = self.sobject(entity)
        field = self.external_id_field_for(sobject)
        # Salesforce refuses Id and the external id itself in the body of an upsert.
        body = {k: v for k, v in fields.items() if k != "Id" and k.lower() != field.lower()}
        url = self.url(self._key_path(sobject, key))
        try:
            result = self.send("PATCH", url, json=body, accept_statuses=(300,))
        except ConnectorError as exc:
            raise _about(exc, f"{self.label(sobject)} {key}") from None
        if result.status == 300:
            raise _duplicates(self.label(sobject), field, key, result.body)
        answer = result.body if isinstance(result.body, dict) else {}
        record_id = answer.get("id")
        if not record_id:  # 204 No Content on an update (older API versions): ask for the id
            found = self.lookup(entity=sobject, key=key)
            record_id = found.external_id if found else ""
        created = bool(answer.get("created")) if "created" in answer else result.status == 201
        return WriteResult(
            external_id=str(record_id),
            request={"method": "PATCH", "url": url, "json": body},
            response=result.body,
            http_status=result.status,
            created=created,
        )

    collection_limit = 200  # sObject Collections take at most 200 records a call

    def upsert_many(self, *, entity: str, records: list[tuple[str, dict[str, Any]]]) -> list[WriteResult]:
        """Upsert by external id with sObject Collections: up to 200 records in one call, all or
        none, so a failure leaves nothing half-written and a retry repeats the whole set."""
        if len(records) < 2:
            return super().upsert_many(entity=entity, records=records)
        sobject = self.sobject(entity)
        field = self.external_id_field_for(sobject)
        results: list[WriteResult] = []
        for start in range(0, len(records), self.collection_limit):
            chunk = records[start : start + self.collection_limit]
            body = {
                "allOrNone": True,
                "records": [
                    {
                        "attributes": {"type": sobject},
                        **{k: v for k, v in fields.items() if k != "Id" and k.lower() != field.lower()},
                        field: key,
                    }
                    for key, fields in chunk
                ],
            }
            url = self.url(self.api_path(f"composite/sobjects/{sobject}/{field}"))
            try:
                result = self.send("PATCH", url, json=body)
            except ConnectorError as exc:
                raise _about(exc, f"{len(chunk)} {self.label(sobject)} records") from None
            answers = result.body if isinstance(result.body, list) else []
            failed = [(key, a) for (key, _), a in zip(chunk, answers, strict=False) if not a.get("success")]
            if failed or len(answers) != len(chunk):
                details = "; ".join(
                    f"{key}: {_explain((a.get('errors') or [{}])[0])}"
                    for key, a in failed
                    if (a.get("errors") or [{}])[0].get("statusCode") != "ALL_OR_NONE_OPERATION_ROLLED_BACK"
                )
                raise RejectedError(
                    f"Salesforce rejected the {self.label(sobject)} records: {details or 'the batch was rolled back'}",
                    http_status=result.status,
                    response=result.body,
                )
            for (key, fields), answer in zip(chunk, answers, strict=True):
                results.append(
                    WriteResult(
                        external_id=str(answer["id"]),
                        request={"method": "PATCH", "url": url, "key": key, "json": fields},
                        response=answer,
                        http_status=result.status,
                        created=bool(answer.get("created")),
                    )
                )
        return results

    def update(self, *, entity: str, record_id: str, fields: dict[str, Any]) -> WriteResult:
        """Change fields of a record by its Salesforce id (records people created carry no key of
        ours). Setting the same values again is harmless, so a repeat needs no lookup."""
        sobject = self.sobject(entity)
        if not _ID.match(record_id):
            raise MappingError(f"{record_id!r} is not a Salesforce record id")
        body = {k: v for k, v in fields.items() if k != "Id"}
        url = self.url(self.api_path(f"sobjects/{sobject}/{record_id}"))
        try:
            result = self.send("PATCH", url, json=body)
        except ConnectorError as exc:
            raise _about(exc, f"{self.label(sobject)} {record_id}") from None
        return WriteResult(
            external_id=record_id,
            request={"method": "PATCH", "url": url, "json": body},
            response=result.body,
            http_status=result.status,
            created=False,
        )

    def lookup(self, *, entity: str, key: str) -> WriteResult | None:
        sobject = self.sobject(entity)
        url = self.url(self._key_path(sobject, key))
        result = self.send("GET", url, accept_statuses=(300, 404))
        if result.status == 404:
            return None
        if result.status == 300:
            raise _duplicates(self.label(sobject), self.external_id_field_for(sobject), key, result.body)
        return WriteResult(
            external_id=str(result.body["Id"]),
            request={"method": "GET", "url": url},
            response=result.body,
            http_status=result.status,
            created=False,
        )

    # Change intake ----------------------------------------------------------------------------
    def parse_webhook(self, *, event_id: str, body: bytes) -> list[InboundChange]:
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise WebhookRejected(400, f"the body is not valid JSON: {exc}") from None
        messages = message if isinstance(message, list) else [message]
        try:
            return [change for item in messages for change in change_event_changes(item)]
        except MalformedRecord as exc:
            raise WebhookRejected(400, exc.message) from None

    def change_subject(self, change: InboundChange) -> c.ChangeSubject:
        """The CRM's changes are the deal's. A Certinia org is the same Salesforce org: its pse__
        objects are handled through the PSA connection only, so one change never starts two handoffs."""
        payload, header = change_event_parts(change.payload)
        if OWN_CLIENT in str(header.get("changeOrigin", "")):
            return c.ChangeSubject(own_write=True)
        action = CHANGE_ACTIONS.get(str(header.get("changeType")), "")
        if header.get("entityName") != "Opportunity" or not action:
            return c.ChangeSubject()
        named = set(header.get("changedFields") or []) | (set(payload) if action == "created" else set())
        return c.ChangeSubject(
            record=c.DEAL,
            action=action,
            changed=frozenset(DEAL_FIELDS[f] for f in named if f in DEAL_FIELDS),
            won=payload.get("StageName") == "Closed Won",
        )

    # Schema governance ---------------------------------------------------------------------------
    def describe_record(self, entity: str) -> RecordShape:
        """`GET sobjects/{Object}/describe`: each field's type, nillable and picklist values. A
        field is required when it must be given on create: not nillable, createable, and not
        filled by Salesforce itself (defaultedOnCreate)."""
        name = self.sobject(entity)
        body = self.send("GET", self.api_path(f"sobjects/{name}/describe")).body
        described = payload_check(body, DESCRIBE_SHAPE, what=f"Salesforce sent a describe of {name}")
        fields = []
        for item in described["fields"]:
            vendor_type = str(item["type"])
            fields.append(
                FieldShape(
                    name=str(item["name"]),
                    kind=DESCRIBE_KINDS.get(vendor_type, TEXT),
                    vendor_type=vendor_type,
                    required=not item.get("nillable", True)
                    and bool(item.get("createable", True))
                    and not item.get("defaultedOnCreate", False),
                    values=tuple(
                        str(v["value"])
                        for v in item.get("picklistValues") or []
                        if isinstance(v, dict) and v.get("active", True) and "value" in v
                    ),
                )
            )
        return shape_of(name, fields)

    # Canonical records -------------------------------------------------------------------------
    def deal_read(self, deal_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The opportunity and its account in one query, as the canonical deal and account."""
        rows = list(self.read("opportunity", where={"Id": deal_id}, fields=list(OPPORTUNITY_FIELDS)))
        if not rows:
            return None
        row = payload_check(rows[0], OPPORTUNITY_SHAPE, what=f"Salesforce sent an opportunity ({deal_id})")
        account = row.get("Account") or {}
        closed_at = _text(row.get("Closed_At__c")) or (
            f"{row['CloseDate']}T00:00:00+00:00" if row.get("CloseDate") else ""
        )
        deal = {
            "id": row["Id"],
            "name": _text(row.get("Name")),
            "stage": _text(row.get("StageName")),
            "probability": row.get("Probability"),
            "is_won": bool(row.get("IsWon")),
            "is_closed": bool(row.get("IsClosed")),
            "close_date": row.get("CloseDate"),
            "closed_at": closed_at,
            "amount": _money_text(row.get("Amount")),
            "currency": _text(row.get("CurrencyIsoCode")).upper(),
            "legal_entity": _text(row.get("Legal_Entity__c")).lower(),
            "service_line": _text(row.get("Service_Line__c")),
            "billing_model": _text(row.get("Billing_Model__c")),
            "contract_start": _text(row.get("Contract_Start__c"))[:10],
            "contract_end": _text(row.get("Contract_End__c"))[:10],
            "contract_version": int(decimal.Decimal(str(row.get("Contract_Version__c") or 1))),
            "po_number": _text(row.get("PO_Number__c")),
            "resource_plan_text": row.get("Resource_Plan__c") or "",
        }
        account_doc = {
            "id": _text(row.get("AccountId")),
            "name": _text(account.get("Name")),
            "number": _text(account.get("AccountNumber")),
            "country": _text(account.get("BillingCountry")).upper(),
            "parent_id": _text(account.get("ParentId")),
            "tax_profile": _text(account.get("Tax_Profile__c")),
        }
        return deal, account_doc

    def deals_won(self, *, entity_code: str, currency: str) -> dict[str, h.Deal]:
        """The legal entity's won deals, by opportunity id."""
        rows = records_checked(
            self.read("opportunity", where={"StageName": "Closed Won"}, fields=list(WON_DEAL_FIELDS)),
            OPPORTUNITY_SHAPE,
            what="Salesforce sent an opportunity",
            id_field="Id",
        )
        deals = {}
        for row in rows:
            if str(row.get("Legal_Entity__c") or "").strip().lower() != entity_code.lower():
                continue
            account = row.get("Account") or {}
            try:
                version = int(float(row.get("Contract_Version__c") or 1))
            except (TypeError, ValueError):
                version = 1
            deals[row["Id"]] = h.Deal(
                id=row["Id"],
                name=row.get("Name") or row["Id"],
                account_id=row.get("AccountId") or "",
                account_name=account.get("Name") or "",
                tax_profile=account.get("Tax_Profile__c") or "",
                amount=h.money(row.get("Amount")),
                currency=(row.get("CurrencyIsoCode") or currency).upper(),
                version=version,
                legal_entity=entity_code,
                close_date=h.day(row.get("CloseDate")),
                modified_at=h.instant(row.get("LastModifiedDate")),
                service_line=str(row.get("Service_Line__c") or ""),
                billing_model=str(row.get("Billing_Model__c") or ""),
            )
        return deals

    def record_url(self, record: str, external_id: str) -> str:
        return f"{self.connection.base_url.rstrip('/')}/{external_id}"

    def account_exists(self, account_id: str) -> bool:
        return bool(list(self.read("account", where={"Id": account_id}, fields=["Id"])))

    def poll(self, *, cursor: str) -> tuple[list[InboundChange], str]:
        """Change events after the replay id `cursor` ("" = every retained event).

        The sandbox serves them over a simplified HTTP pull (/cometd/NN.N/pull) in CometD's
        message shape; a real org delivers them over CometD or the Pub/Sub API."""
        version = self.api_version.removeprefix("v")
        params = {"channel": "/data/ChangeEvents", "replayId": cursor or "-2", "limit": "200"}
        result = self.send("GET", f"/cometd/{version}/pull", params=params)
        pulled = payload_check(result.body, PULL_SHAPE, what="Salesforce sent a change event pull")
        messages = pulled["messages"]
        changes = [change for item in messages for change in change_event_changes(item)]
        latest = pulled.get("latestReplayId")
        next_cursor = str(latest) if latest is not None else cursor
        return changes, next_cursor


# Helpers ---------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _money_text(value: Any) -> str | None:
    try:
        return str(decimal.Decimal(str(value)).quantize(decimal.Decimal("0.01"))) if value not in (None, "") else None
    except decimal.InvalidOperation:
        return None


def change_event_parts(message: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored change event's record fields and its ChangeEventHeader ({} when absent)."""
    payload = ((message or {}).get("data") or {}).get("payload") or {}
    return payload, payload.get("ChangeEventHeader") or {}


def change_event_changes(message: Any) -> list[InboundChange]:
    """One CDC message (CometD shape) as InboundChanges: one per record it names. A message of
    another shape is a MalformedRecord (parse_webhook answers it with a 400)."""
    payload_check(message, CHANGE_EVENT_SHAPE, what="Salesforce sent a change event")
    try:
        data = message["data"]
        payload = data["payload"]
        header = payload["ChangeEventHeader"]
        replay_id = int(data["event"]["replayId"])
        record_ids = list(header["recordIds"])
        entity, change_type = str(header["entityName"]), str(header["changeType"])
        occurred_at = dt.datetime.fromtimestamp(int(header["commitTimestamp"]) / 1000, tz=dt.UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError) as exc:
        raise MalformedRecord(f"Salesforce sent a change event we cannot read: {exc}") from None
    named = [*record_ids, *(header.get("changedFields") or [])]
    if not all(isinstance(name, str) and name for name in named):
        raise MalformedRecord("Salesforce sent a change event we cannot read: a record id or field name is not text")
    if not record_ids:
        raise MalformedRecord("Salesforce sent a change event we cannot read: it names no record (recordIds is empty)")
    event_uuid = str(data["event"].get("EventUuid") or "")
    changes = []
    for record_id in record_ids:
        if event_uuid:
            source_id = event_uuid if len(record_ids) == 1 else f"{event_uuid}:{record_id}"
        else:
            source_id = f"{header.get('transactionKey', '')}:{header.get('sequenceNumber', 0)}:{record_id}"
        changes.append(
            InboundChange(
                source_event_id=source_id,
                event_type=f"{entity}.{change_type}",
                flow="",
                business_key=str(record_id),
                occurred_at=occurred_at,
                payload=message,
                sequence=replay_id,
            )
        )
    return changes


def _error_code(body: Any) -> str:
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode") or body[0].get("statusCode") or "")
    return ""


def _explain(item: dict[str, Any]) -> str:
    """One Salesforce error in words a finance person understands."""
    code = str(item.get("errorCode") or item.get("statusCode") or "")
    message = str(item.get("message") or "").strip()
    fields = ", ".join(str(f) for f in item.get("fields") or [])
    explained = {
        "REQUIRED_FIELD_MISSING": f"required field(s) missing: {fields or message}",
        "FIELD_CUSTOM_VALIDATION_EXCEPTION": f"a Salesforce validation rule refused it: {message}",
        "DUPLICATE_VALUE": f"another record already has this value ({message})",
        "INVALID_FIELD": f"the mapping uses a field Salesforce does not accept: {message}",
        "INVALID_FIELD_FOR_INSERT_UPDATE": f"the mapping writes a read-only field: {fields or message}",
        "MALFORMED_ID": f"a linked record id is not a Salesforce id ({fields}): {message}",
        "INVALID_CROSS_REFERENCE_KEY": f"a linked record does not exist in Salesforce ({fields})",
        "INVALID_SESSION_ID": "Salesforce refused our session; check the connection's client id and secret",
        "REQUEST_LIMIT_EXCEEDED": f"the org's API request limit is reached ({message})",
        "NOT_FOUND": "the record was not found in Salesforce",
        "ENTITY_IS_DELETED": "the record has been deleted in Salesforce",
        "MALFORMED_QUERY": f"the query was refused: {message}",
        "INVALID_TYPE": f"Salesforce has no such object: {message}",
        "INSUFFICIENT_ACCESS": f"the integration user may not do this: {message}",
        "STRING_TOO_LONG": f"a value is too long for its field ({fields}): {message}",
    }.get(code)
    return explained or (f"{message} ({code})" if code else message)


def _about(error: ConnectorError, subject: str) -> ConnectorError:
    """Name the record in a rejection: "Salesforce rejected the account ACME-1: ..."."""
    if error.message.startswith("Salesforce rejected the request"):
        error.message = error.message.replace("the request", f"the {subject}", 1)
        error.args = (error.message,)
    return error


def _duplicates(label: str, field: str, key: str, body: Any) -> RejectedError:
    count = len(body) if isinstance(body, list) else "several"
    return RejectedError(
        f"Salesforce has {count} {label} records with {field} = {key}, so it cannot tell which one to update; "
        "merge the duplicates in Salesforce, then resubmit",
        http_status=300,
        response=body,
    )


def _check_field(name: str) -> None:
    if not _FIELD_NAME.match(name):
        raise MappingError(f"{name!r} is not a Salesforce field name")


def _literal(value: Any) -> str:
    """A SOQL literal, quoted and escaped."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    text = str(value).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    """A query record without Salesforce's `attributes` blocks (also in related records)."""
    return {k: _plain(v) if isinstance(v, dict) else v for k, v in record.items() if k != "attributes"}
