"""What the Microsoft OData sandboxes share (Business Central, connectors/sandboxes/businesscentral.py,
and Dynamics 365 Finance, connectors/sandboxes/dynamicsfinance.py): the Entra ID token endpoint in
front of them, the $filter expression language, and server-driven paging.

  POST /{tenant}/oauth2/v2.0/token   client credentials (form-encoded), scope <resource>/.default;
                                     errors as Entra writes them: {"error", "error_description":
                                     "AADSTS<code>: ... Trace ID: ...", "error_codes", ...}
  $filter                            eq ne gt ge lt le, and, or, not, parentheses; literals typed
                                     by the property they are compared with
  paging                             $top, $skip, $skiptoken; `Prefer: odata.maxpagesize=N` up to
                                     the product's page size, then @odata.nextLink

Like every sandbox it imports nothing of pscsync (connectors/sandboxes/base.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
import time
import uuid
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

from connectors.sandboxes.base import BadRequest, Request, Response, Sandbox

TENANT = "sandbox-tenant"


def origin(request: Request) -> str:
    """This sandbox's own address as the client called it (a resource, and every link's start)."""
    scheme = request.header("x-forwarded-proto") or "http"
    return f"{scheme}://{request.header('host') or '127.0.0.1'}"


def parse_instant(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


# The Entra ID token endpoint ----------------------------------------------------------------------
class EntraSandbox(Sandbox):
    """A sandbox behind Microsoft Entra ID: client-credentials tokens for one resource."""

    token_roles: tuple[str, ...] = ()  # the app roles its tokens carry

    def token_resource(self, request: Request) -> str:
        """The resource (application ID URI) tokens are for: the scope asked is it + /.default."""
        raise NotImplementedError

    def setup_routes(self) -> None:
        self.route("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", self.token, auth=False)

    def _aad_error(self, status: int, error: str, code: int, description: str) -> Response:
        trace = str(uuid.uuid4())
        stamp = f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%SZ}"
        return Response(
            status,
            {
                "error": error,
                "error_description": f"AADSTS{code}: {description} Trace ID: {trace} Correlation ID: "
                f"{uuid.uuid4()} Timestamp: {stamp}",
                "error_codes": [code],
                "timestamp": stamp,
                "trace_id": trace,
                "correlation_id": str(uuid.uuid4()),
            },
        )

    def token(self, request: Request) -> Response:
        if request.params["tenant"] != TENANT:
            return self._aad_error(
                400, "invalid_request", 90002, f"Tenant '{request.params['tenant']}' not found. Check the tenant id."
            )
        if "application/x-www-form-urlencoded" not in request.header("content-type"):
            return self._aad_error(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'."
            )
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8", "replace")).items()}
        for required in ("grant_type", "client_id"):
            if not form.get(required):
                return self._aad_error(
                    400,
                    "invalid_request",
                    900144,
                    f"The request body must contain the following parameter: '{required}'.",
                )
        if form["grant_type"] != "client_credentials":
            return self._aad_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{form['grant_type']}'.",
            )
        if form["client_id"] != self.client_id:
            return self._aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{form['client_id']}' was not found in the directory '{TENANT}'.",
            )
        if not secrets.compare_digest(form.get("client_secret", ""), self.client_secret):
            return self._aad_error(
                401,
                "invalid_client",
                7000215,
                f"Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{self.client_id}'.",
            )
        resource = self.token_resource(request)
        wanted = f"{resource}/.default"
        if wanted not in form.get("scope", "").split():
            return self._aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {form.get('scope', '')!r} is not valid. Client credential flows must "
                f"have a scope value with /.default suffixed to the resource identifier ({wanted}).",
            )
        lifetime = float(self.faults.setting("token_lifetime_seconds") or self.token_lifetime)
        access_token = self._jwt(resource, lifetime)
        with self.store.lock:
            self.store.db.execute(
                "INSERT INTO tokens (token, client_id, expires_at) VALUES (?, ?, ?)",
                (access_token, self.client_id, time.time() + lifetime),
            )
        seconds = int(lifetime)
        return Response(
            200,
            {"token_type": "Bearer", "expires_in": seconds, "ext_expires_in": seconds, "access_token": access_token},
        )

    def _jwt(self, audience: str, lifetime: float) -> str:
        """Looks like an Entra access token; the sandbox checks it against its token table only."""

        def part(data: dict[str, Any] | bytes) -> str:
            raw = data if isinstance(data, bytes) else json.dumps(data, separators=(",", ":")).encode()
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        issued = int(time.time())
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{TENANT}/",
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(lifetime),
            "appid": self.client_id,
            "tid": TENANT,
            "uti": secrets.token_urlsafe(16),
        }
        if self.token_roles:
            claims["roles"] = list(self.token_roles)
        return ".".join(
            [part({"typ": "JWT", "alg": "RS256", "kid": "sandbox"}), part(claims), part(secrets.token_bytes(64))]
        )


# $filter: a small OData expression parser -----------------------------------------------------------
TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<dt>\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:\d\d))"
    r"|(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"|(?P<date>\d{4}-\d\d-\d\d)|(?P<num>-?\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)|(?P<paren>[()]))"
)
OPERATORS = {"eq", "ne", "gt", "ge", "lt", "le"}
# The filter's property types (str:<max> | num | int | bool | date | datetime | guid | enum:A|B) in EDM.
EDM = {"str": "Edm.String", "num": "Edm.Decimal", "int": "Edm.Int32", "bool": "Edm.Boolean", "date": "Edm.Date"}
EDM |= {"datetime": "Edm.DateTimeOffset", "guid": "Edm.Guid", "enum": "Edm.String"}


class Filterable(Protocol):
    """What $filter needs of an entity: its type's name and its properties' types."""

    @property
    def type_name(self) -> str: ...

    @property
    def fields(self) -> dict[str, str]: ...


class Filter:
    """Parse once, then test records. Raises BadRequest with the product's messages on bad syntax;
    `namespace` is the schema namespace its messages name types in."""

    def __init__(self, text: str, entity: Filterable, *, namespace: str = "Microsoft.NAV") -> None:
        self.entity = entity
        self.namespace = namespace
        self.tokens: list[tuple[str, Any]] = []
        position = 0
        while position < len(text):
            match = TOKEN.match(text, position)
            if not match or match.end() == position:
                if text[position:].strip() == "":
                    break
                raise BadRequest(f"Syntax error at position {position} in '{text}'.", code="BadRequest")
            kind = match.lastgroup or ""
            raw = match.group(kind)
            self.tokens.append((kind, raw))
            position = match.end()
        self.at = 0
        self.tree = self._or()
        if self.at != len(self.tokens):
            raise BadRequest(f"Syntax error: unexpected '{self.tokens[self.at][1]}' in '{text}'.", code="BadRequest")

    def _peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _word(self, *words: str) -> bool:
        token = self._peek()
        if token and token[0] == "word" and token[1] in words:
            self.at += 1
            return True
        return False

    def _or(self) -> Any:
        node = self._and()
        while self._word("or"):
            node = ("or", node, self._and())
        return node

    def _and(self) -> Any:
        node = self._not()
        while self._word("and"):
            node = ("and", node, self._not())
        return node

    def _not(self) -> Any:
        if self._word("not"):
            return ("not", self._not())
        token = self._peek()
        if token == ("paren", "("):
            self.at += 1
            node = self._or()
            if self._peek() != ("paren", ")"):
                raise BadRequest("Syntax error: ')' expected in $filter.", code="BadRequest")
            self.at += 1
            return node
        return self._comparison()

    def _comparison(self) -> Any:
        if self.at + 3 > len(self.tokens):
            raise BadRequest("Syntax error: the $filter expression ends too early.", code="BadRequest")
        (kind, name), (op_kind, op), literal = self.tokens[self.at : self.at + 3]
        self.at += 3
        if kind != "word" or op_kind != "word" or op not in OPERATORS:
            raise BadRequest(f"Syntax error near '{name} {op}' in $filter.", code="BadRequest")
        field_type = self.entity.fields.get(name)
        if field_type is None:
            raise BadRequest(
                f"Could not find a property named '{name}' on type '{self.namespace}.{self.entity.type_name}'.",
                code="BadRequest",
            )
        return ("cmp", name, op, self._value(field_type, literal, op))

    def _value(self, field_type: str, literal: tuple[str, str], op: str) -> Any:
        kind, raw = literal
        base = field_type.split(":", 1)[0]
        if kind == "word" and raw == "null":
            return None
        if base in {"str", "enum"} and kind == "str":
            return raw[1:-1].replace("''", "'")
        if base in {"num", "int"} and kind == "num":
            return float(raw)
        if base == "bool" and kind == "word" and raw in {"true", "false"}:
            return raw == "true"
        if base == "datetime" and kind == "dt":
            return parse_instant(raw)
        if base == "date" and kind == "date":
            return raw
        if base == "guid" and kind in {"guid", "str"}:
            return raw.strip("'").lower()
        found = {"str": "Edm.String", "num": "Edm.Decimal", "dt": "Edm.DateTimeOffset", "date": "Edm.Date"}.get(
            kind, "Edm.Guid" if kind == "guid" else "Edm.Untyped"
        )
        raise BadRequest(
            f"A binary operator with incompatible types was detected. Found operand types "
            f"'{EDM[base]}' and '{found}' for operator kind '{op}'.",
            code="BadRequest",
        )

    def simple_equality(self) -> tuple[str, Any] | None:
        """(field, value) when the whole filter is `field eq 'text'`: served from an index."""
        node = self.tree
        if node[0] == "cmp" and node[2] == "eq" and isinstance(node[3], str):
            return node[1], node[3]
        return None

    def test(self, record: dict[str, Any]) -> bool:
        return self._eval(self.tree, record)

    def _eval(self, node: Any, record: dict[str, Any]) -> bool:
        if node[0] == "and":
            return self._eval(node[1], record) and self._eval(node[2], record)
        if node[0] == "or":
            return self._eval(node[1], record) or self._eval(node[2], record)
        if node[0] == "not":
            return not self._eval(node[1], record)
        _, name, op, wanted = node
        value = record.get(name)
        if isinstance(wanted, dt.datetime):
            value = parse_instant(value) if value else None
        elif isinstance(wanted, float) and value is not None:
            value = float(value)
        elif isinstance(value, str) and self.entity.fields[name] == "guid":
            value = value.lower()
        if op == "eq":
            return value == wanted
        if op == "ne":
            return value != wanted
        if value is None or wanted is None:
            return False
        try:
            return {"gt": value > wanted, "ge": value >= wanted, "lt": value < wanted, "le": value <= wanted}[op]
        except TypeError:
            return False


# Server-driven paging -------------------------------------------------------------------------------
def server_page(
    request: Request, records: list[dict[str, Any]], *, max_page_size: int
) -> tuple[list[dict[str, Any]], str | None, dict[str, str]]:
    """One page of `records` (each numbered by its `_n`, in order) for $top, $skip, $skiptoken and
    `Prefer: odata.maxpagesize`: (the page, the @odata.nextLink to the rest or None, headers)."""
    try:
        skip = int(request.arg("$skip") or 0)
        top = int(request.arg("$top")) if request.arg("$top") else None
        after = int(request.arg("$skiptoken") or 0)
    except ValueError:
        raise BadRequest("$top, $skip and $skiptoken must be whole numbers.", code="BadRequest") from None
    if skip < 0 or (top is not None and top < 0):
        raise BadRequest("$top and $skip must not be negative.", code="BadRequest")
    records = [r for r in records if r["_n"] > after][skip:]
    if top is not None:
        records = records[:top]
    page_size = max_page_size
    headers: dict[str, str] = {}
    preference = re.search(r"odata\.maxpagesize=(\d+)", request.header("prefer"))
    if preference and int(preference.group(1)) > 0:
        page_size = min(int(preference.group(1)), max_page_size)
        headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
    page, rest = records[:page_size], records[page_size:]
    if not rest:
        return page, None, headers
    query = {k: v[0] for k, v in request.query.items() if k not in {"$skiptoken", "$skip", "$top"}}
    query["$skiptoken"] = str(page[-1]["_n"])
    if top is not None:
        query["$top"] = str(len(rest))
    # OData writes its system options with a literal `$` (…?$filter=…&$skiptoken=…), as the services do.
    encoded = "&".join(f"{quote(k, safe='$')}={quote(v, safe=chr(39))}" for k, v in query.items())
    return page, f"{origin(request)}{request.path}?{encoded}", headers
