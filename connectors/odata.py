"""OData v4 as Microsoft's business APIs speak it, shared by the Business Central
(connectors/businesscentral.py) and Dynamics 365 Finance (connectors/dynamicsfinance.py) connectors:

- a Microsoft Entra ID client-credentials token (form POST to /{tenant}/oauth2/v2.0/token);
- $filter literals;
- server-driven paging: `Prefer: odata.maxpagesize=N`, then `@odata.nextLink` until there is none;
- the error envelope {"error": {"code", "message", "innererror": {"message", ...}}} in a finance
  person's words;
- the CSDL `$metadata` document as a RecordShape (schema governance);
- `$batch` (multipart/mixed), each change set applied all or nothing.

What differs per product stays in its module: its addresses, the scope it asks a token for, which
host is its public API, and the words it uses for a 401, a 403 and a missing company.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import urlsplit

from connectors import http, limiter
from connectors.base import Connector, Token
from connectors.errors import ConnectorError, RejectedError, TransientError, UnknownOutcomeError
from connectors.schema import PayloadShape, RecordShape, csdl_shape, payload_check, records_checked

PUBLIC_LOGIN_URL = "https://login.microsoftonline.com"
# A collection page as OData v4 defines it (the records in `value`, the next page's address).
PAGE_SHAPE: PayloadShape = {"value": ((list,), True, {}), "@odata.nextLink": ((str,), False)}
# What Microsoft appends to an error message that no finance person can act on: BC's correlation
# id, D365's stack trace.
ERROR_NOISE = re.compile(r"\s*(CorrelationId|Stack trace|StackTrace):.*$", re.DOTALL)


def odata_literal(value: str) -> str:
    """A string literal for $filter and keys: single quotes doubled, as OData requires."""
    return "'" + value.replace("'", "''") + "'"


def literal(value: Any) -> str:
    """Any value as a $filter literal: numbers and booleans bare, instants in UTC, dates as the
    midnight that starts them, everything else a quoted string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return f"{value.isoformat()}T00:00:00Z"
    return odata_literal(str(value))


def odata_error(body: Any) -> tuple[str, str]:
    """(code, message) of an OData error body. The inner message comes first: where the outer one
    is only "An error has occurred." (D365), the infolog a person can act on is inside."""
    outer = body.get("error") if isinstance(body, dict) else None
    detail: dict[str, Any] = outer if isinstance(outer, dict) else {}
    inner: dict[str, Any] = detail["innererror"] if isinstance(detail.get("innererror"), dict) else {}
    message = ERROR_NOISE.sub("", str(inner.get("message") or detail.get("message") or "")).strip()
    return str(detail.get("code") or ""), message


class ODataConnector(Connector):
    """A Microsoft OData v4 API behind an Entra ID app registration."""

    product: ClassVar[str]  # the name a finance person knows it by, in every message
    page_size: ClassVar[int] = 1000  # asked for with Prefer: odata.maxpagesize
    conflict_codes: ClassVar[frozenset[str]] = frozenset()  # error codes that mean "changed meanwhile"
    record_id_field: ClassVar[str] = ""  # the field that names a record in a malformed-record message

    def __init__(self, connection: Any) -> None:
        super().__init__(connection)
        # The record a call is about, for its error message ("... rejected the customer: ...").
        self._context = threading.local()

    @property
    def credentials(self) -> dict[str, Any]:
        return self.connection.credentials()

    # Auth ---------------------------------------------------------------------------------------
    def token_scope(self) -> str:
        """The resource's /.default scope the token is asked for."""
        raise NotImplementedError

    def public_api_host(self, host: str) -> bool:
        """Whether `host` is the product's own cloud, whose tokens come from Entra's public host."""
        raise NotImplementedError

    def _login_url(self) -> str:
        """Entra ID lives on its own host for the real service; a sandbox serves both from base_url."""
        configured = self.credentials.get("login_url")
        if configured:
            return str(configured).rstrip("/")
        if self.public_api_host(urlsplit(self.connection.base_url).hostname or ""):
            return PUBLIC_LOGIN_URL
        return self.connection.base_url.rstrip("/")

    def fetch_token(self) -> Token:
        creds = self.credentials
        url = f"{self._login_url()}/{creds['tenant']}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
            "scope": self.token_scope(),
        }
        try:
            result = self.call("POST", url, data=form)  # form-encoded: Entra accepts nothing else
        except RejectedError as exc:
            body = exc.response if isinstance(exc.response, dict) else {}
            description = str(body.get("error_description") or exc.message).split(" Trace ID:")[0]
            exc.message = f"Microsoft Entra ID refused the {self.product} credentials: {description}"
            exc.args = (exc.message,)
            raise
        body = result.body if isinstance(result.body, dict) else {}
        if "access_token" not in body:
            raise RejectedError("Microsoft Entra ID answered without an access token", response=result.body)
        return Token(value=body["access_token"], expires_at=time.time() + float(body.get("expires_in", 3599)))

    # Errors -------------------------------------------------------------------------------------
    def describe_refusal(self, error: ConnectorError, code: str, message: str, noun: str) -> str | None:
        """The product's own words for a 401, a 403 or a missing company; None: the shared words."""
        return None

    def describe_error(self, error: ConnectorError) -> None:
        code, message = odata_error(error.response)
        noun = getattr(self._context, "noun", "request")
        status = error.http_status
        said = f": {message}" if message else ""
        if status == 429:
            wait = getattr(error, "retry_after", None)
            error.message = f"{self.product} is throttling our requests (429 Too Many Requests)" + (
                f"; retrying after {wait:g} s" if wait else "; retrying with back-off"
            )
        elif (own := self.describe_refusal(error, code, message, noun)) is not None:
            error.message = own
        elif status in (409, 412) or code in self.conflict_codes:
            error.message = f"Someone changed the {noun} in {self.product} while we were updating it: {message}"
        elif status is not None and status >= 500:
            error.message = f"{self.product} failed while handling the {noun} ({status}{said})"
        elif message:
            error.message = f"{self.product} rejected the {noun}: {message}"
        error.args = (error.message,)

    # Reading ------------------------------------------------------------------------------------
    def pages(
        self, url: str, params: dict[str, str] | None = None, *, shape: PayloadShape | None = None, what: str = ""
    ) -> Iterator[dict[str, Any]]:
        """Every row of a collection query, page by page: each answer's @odata.nextLink carries
        the query on, so `params` go with the first request only. Each page, and each row
        against the product's declared `shape` for it, is checked before it is read (page_checked)."""
        headers = {"Prefer": f"odata.maxpagesize={self.page_size}"}
        next_url: str | None = url
        while next_url:
            body = self.page_checked(self.send("GET", next_url, params=params, headers=headers).body, shape, what=what)
            yield from body["value"]
            next_url = body.get("@odata.nextLink")
            params = None

    def page_checked(self, body: Any, shape: PayloadShape | None, *, what: str) -> dict[str, Any]:
        """One page, and each record on it against `shape`: a MalformedRecord saying `what` (who
        sent which record: "Business Central sent a sales invoice") when either has another shape."""
        what = what or f"{self.product} sent a record"
        page = payload_check(body, PAGE_SHAPE, what=what.replace(" sent a", " sent a page of", 1))
        if shape is not None:
            list(records_checked(page["value"], shape, what=what, id_field=self.record_id_field))
        return page

    def metadata_shape(self, url: str, entity_set: str) -> RecordShape:
        """An entity set's type in the service's `$metadata` (CSDL XML): property types, enum
        members and nullability. One document describes every entity set."""
        result = self.send("GET", url, headers={"Accept": "application/xml"})
        return csdl_shape(result.text or str(result.body or ""), entity_set)

    # Writing ------------------------------------------------------------------------------------
    def batch_url(self) -> str:
        """Where the service takes $batch requests."""
        raise NotImplementedError

    def batch(self, changesets: Sequence[Sequence[BatchRequest]]) -> list[list[BatchAnswer]]:
        """POST $batch: one HTTP call for many writes, each change set all or nothing. The
        answers come back per change set; raise_for_answer turns a failed one into the error a
        lone call would have raised. A 429 on the $batch itself pauses the connection in `call`."""
        boundary = uuid.uuid4().hex
        content = batch_encode(changesets, boundary)
        headers = {"Content-Type": f"multipart/mixed; boundary=batch_{boundary}", "Accept": "multipart/mixed"}
        result = self.send("POST", self.batch_url(), content=content, headers=headers)
        content_type = next((v for k, v in result.headers.items() if k.lower() == "content-type"), "")
        return batch_decode(str(result.body or ""), content_type)

    def raise_for_answer(self, answer: BatchAnswer) -> None:
        """A failed part of a $batch, classified as http.request classifies a lone call. Its
        Retry-After (a 429, or a 503) pauses the connection for every worker, as a lone call's
        does: the service throttled the app, not the one part."""
        if 200 <= answer.status < 300:
            return
        error: ConnectorError
        retry = http.parse_retry_after(answer.headers.get("retry-after"))
        if answer.status == 429:
            limiter.record_throttled(self.connection.pk)
            error = TransientError(
                "the target is rate limiting us (429)", retry_after=retry, http_status=429, response=answer.body
            )
        elif answer.status >= 500:
            error = UnknownOutcomeError(
                f"the target failed with {answer.status}", http_status=answer.status, response=answer.body
            )
            if answer.status == 503:
                error.retry_after = retry
        else:
            error = RejectedError(
                f"the target rejected the request ({answer.status}): {http.vendor_message(answer.body)}",
                http_status=answer.status,
                response=answer.body,
            )
        self.honour_retry_after(error)
        self.describe_error(error)
        raise error


# $batch (OData v4 multipart/mixed) ---------------------------------------------------------------
@dataclass(frozen=True)
class BatchRequest:
    method: str
    url: str
    body: dict[str, Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BatchAnswer:
    status: int
    body: Any
    headers: dict[str, str]


def batch_encode(changesets: Sequence[Sequence[BatchRequest]], boundary: str) -> bytes:
    """A $batch body: each inner sequence is one change set (applied all or nothing)."""
    out: list[str] = []
    for number, changeset in enumerate(changesets, start=1):
        inner = f"changeset_{boundary}_{number}"
        out += [f"--batch_{boundary}", f"Content-Type: multipart/mixed; boundary={inner}", ""]
        for content_id, request in enumerate(changeset, start=1):
            body = json.dumps(request.body) if request.body is not None else ""
            out += [
                f"--{inner}",
                "Content-Type: application/http",
                "Content-Transfer-Encoding: binary",
                f"Content-ID: {content_id}",
                "",
                f"{request.method} {request.url} HTTP/1.1",
                "Content-Type: application/json; type=entry",
                "Accept: application/json",
                *(f"{k}: {v}" for k, v in request.headers),
                "",
                body,
            ]
        out.append(f"--{inner}--")
    out.append(f"--batch_{boundary}--")
    return ("\r\n".join(out) + "\r\n").encode()


def _boundary(content_type: str) -> str:
    match = re.search(r'boundary="?([^";]+)"?', content_type or "")
    if not match:
        raise RejectedError(f"the $batch answer is not multipart (Content-Type {content_type!r})")
    return match.group(1)


def _split(text: str, boundary: str) -> list[tuple[dict[str, str], str]]:
    """The parts between --boundary lines: (their MIME headers, lower-cased; their body)."""
    parts = []
    for chunk in re.split(rf"--{re.escape(boundary)}(?:--)?", text)[1:]:
        chunk = chunk.lstrip("\r\n")
        if not chunk.strip():
            continue
        head, _, body = _head_body(chunk)
        headers = {}
        for line in head.splitlines():
            name, _, value = line.partition(":")
            if name.strip():
                headers[name.strip().lower()] = value.strip()
        parts.append((headers, body))
    return parts


def _head_body(chunk: str) -> tuple[str, str, str]:
    """Headers, the blank line, the rest (all headers when there is no blank line)."""
    match = re.search(r"\r?\n\r?\n", chunk)
    if match is None:
        return chunk, "", ""
    return chunk[: match.start()], match.group(0), chunk[match.end() :]


def _http_answer(text: str) -> BatchAnswer:
    """One application/http part: a status line, headers, a JSON body."""
    head, _, body = _head_body(text.lstrip("\r\n"))
    lines = head.splitlines()
    status_line = lines[0] if lines else ""
    match = re.match(r"HTTP/\d\.\d (\d{3})", status_line)
    if not match:
        raise RejectedError(f"the $batch answer has a part without a status line: {status_line[:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = body.strip()
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = body[:2000]
    return BatchAnswer(int(match.group(1)), parsed, headers)


def batch_decode(text: str, content_type: str) -> list[list[BatchAnswer]]:
    """The answers of a $batch, one list per change set. A change set that failed has one answer:
    the error that undid it (OData v4.0)."""
    out = []
    for headers, body in _split(text, _boundary(content_type)):
        kind = headers.get("content-type", "")
        if kind.startswith("multipart/mixed"):
            out.append([_http_answer(b) for _, b in _split(body, _boundary(kind))])
        else:
            out.append([_http_answer(body)])
    return out
