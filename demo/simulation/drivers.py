"""HTTP drivers: the firm's people acting in the vendor sandboxes through the vendors' own APIs.

Each driver signs in as the vendor wants (Salesforce and Kantata client credentials, NetSuite a
certificate-signed JWT, Business Central and Dynamics 365 Finance an Entra token), sends JSON and
returns JSON. A busy or
down vendor (429, 5xx, connection refused) is waited out a few times, as a person would retry;
then `VendorUnavailable` lets the simulator try the action again later.

Nothing here reads pscsync's database; the sandboxes are reached over HTTP only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from connectors.netsuite import sign_assertion

NETSUITE_KEY = Path(__file__).resolve().parents[2] / "connectors" / "sandboxes" / "netsuite" / "demo-private-key.pem"
BC_COMPANY = "5d2f7c8e-0000-4a1b-9c00-000000000001"
BC_TENANT, BC_ENVIRONMENT = "sandbox-tenant", "production"
SF_VERSION = "v62.0"
CLIENT = {"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
# Change events carry this, so pscsync can tell a person's edit from its own write-back.
SF_CALL_OPTIONS = "client=northwind-firm"
# The sandboxes the firm works in, by name (the German entity's Kantata account is its own).
SANDBOXES = ("salesforce", "kantata", "netsuite", "businesscentral", "dynamicsfinance", "kantata-de")
D365_TENANT = "sandbox-tenant"


class VendorError(RuntimeError):
    def __init__(self, status: int, body: Any, what: str) -> None:
        super().__init__(f"{what}: HTTP {status}: {str(body)[:300]}")
        self.status = status
        self.body = body


class VendorUnavailable(VendorError):
    """Down, throttled or unreachable after a few tries: try the action again later."""


class Driver:
    name = ""

    def __init__(self, base_url: str, *, client: httpx.Client | None = None, patience: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = client or httpx.Client(timeout=15)
        self.token: str | None = None
        self.patience = patience
        self.calls = 0

    def fetch_token(self) -> str:
        raise NotImplementedError

    def headers(self) -> dict[str, str]:
        if self.token is None:
            self.token = self.fetch_token()
        return {"Authorization": f"Bearer {self.token}"}

    def request(self, method: str, path: str, *, what: str = "", ok: tuple[int, ...] = (), **kwargs: Any) -> Any:
        """Send, retrying transient failures for up to `patience` seconds; the JSON answer (or
        the response itself when it has no JSON body)."""
        url = path if path.startswith("http") else f"{self.base_url}{path}"
        extra_headers = kwargs.pop("headers", {})
        deadline = time.monotonic() + self.patience
        delay = 0.05
        refreshed = False
        while True:
            try:
                headers = {**self.headers(), **extra_headers}
                self.calls += 1
                response = self.http.request(method, url, headers=headers, **kwargs)
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                # Unreachable, or the sign-in itself failed (an outage covers the token endpoint).
                status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else 0
                if isinstance(exc, httpx.HTTPStatusError) and status not in (429, 502, 503, 504):
                    raise VendorError(status, exc.response.text, f"{self.name} sign-in") from None
                if time.monotonic() > deadline:
                    raise VendorUnavailable(status, str(exc), what or f"{self.name} {method} {path}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            if response.status_code == 401 and not refreshed:
                self.token, refreshed = None, True
                continue
            transient = response.status_code in (429, 502, 503, 504) or (
                self.name == "salesforce" and response.status_code == 403 and "LIMIT_EXCEEDED" in response.text
            )
            if transient:
                if time.monotonic() > deadline:
                    raise VendorUnavailable(response.status_code, response.text, what or f"{self.name} {method} {path}")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            if response.status_code >= 400 and response.status_code not in ok:
                raise VendorError(response.status_code, _body(response), what or f"{self.name} {method} {path}")
            return _body(response) if response.content else response

    # The sandbox control API (faults) -----------------------------------------------------------
    def fault(self, **rule: Any) -> None:
        self.http.post(f"{self.base_url}/_sandbox/faults", json=rule, timeout=5).raise_for_status()

    def clear_faults(self) -> None:
        self.http.delete(f"{self.base_url}/_sandbox/faults", timeout=5).raise_for_status()

    def journal(self) -> dict[str, Any]:
        return self.http.get(f"{self.base_url}/_sandbox/journal", timeout=10).json()


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


# Salesforce (and Certinia, in the same org) --------------------------------------------------------
class Salesforce(Driver):
    name = "salesforce"

    def fetch_token(self) -> str:
        answer = self.http.post(
            f"{self.base_url}/services/oauth2/token", data={"grant_type": "client_credentials", **CLIENT}
        )
        answer.raise_for_status()
        return answer.json()["access_token"]

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "Sforce-Call-Options": SF_CALL_OPTIONS}

    def api(self, path: str) -> str:
        return f"/services/data/{SF_VERSION}/{path.lstrip('/')}"

    def create(self, sobject: str, fields: dict[str, Any]) -> str:
        return self.request("POST", self.api(f"sobjects/{sobject}/"), json=fields, what=f"create {sobject}")["id"]

    def upsert(self, sobject: str, key: str, fields: dict[str, Any]) -> str:
        """Create or update by our own external id (`pscsync_Key__c`), so a repeated action
        (after an outage) never creates twice."""
        answer = self.request(
            "PATCH",
            self.api(f"sobjects/{sobject}/pscsync_Key__c/{quote(key, safe='')}"),
            json=fields,
            what=f"upsert {sobject} {key}",
        )
        if isinstance(answer, dict) and answer.get("id"):
            return answer["id"]
        found = self.query(f"SELECT Id FROM {sobject} WHERE pscsync_Key__c = '{key}'")  # noqa: S608  # nosec B608  # SOQL on ids read back from the vendor
        return found[0]["Id"]

    def update(self, sobject: str, record_id: str, fields: dict[str, Any]) -> None:
        self.request("PATCH", self.api(f"sobjects/{sobject}/{record_id}"), json=fields, what=f"update {sobject}")

    def get(self, sobject: str, record_id: str) -> dict[str, Any]:
        return self.request("GET", self.api(f"sobjects/{sobject}/{record_id}"), what=f"read {sobject}")

    def query(self, soql: str) -> list[dict[str, Any]]:
        answer = self.request("GET", self.api("query"), params={"q": soql}, what="SOQL")
        records = list(answer["records"])
        while not answer.get("done", True) and answer.get("nextRecordsUrl"):
            answer = self.request("GET", answer["nextRecordsUrl"], what="SOQL page")
            records += answer["records"]
        return records

    def billing_run(self, *, date: str, project: str | None = None) -> list[str]:
        """Certinia's billing run (the sandbox's endpoint), dated on the business day it runs."""
        body: dict[str, Any] = {"date": date}
        if project:
            body["project"] = project
        answer = self.request("POST", "/_sandbox/certinia/billing-events", json=body, what="Certinia billing run")
        return list(answer.get("billingEvents", []))

    def subscribe(self, *, url: str, secret: str) -> None:
        self.http.post(
            f"{self.base_url}/_sandbox/subscribers",
            json={"url": url, "secret": secret, "channel": "/data/ChangeEvents"},
            timeout=10,
        ).raise_for_status()


# Kantata OX -------------------------------------------------------------------------------------------
class Kantata(Driver):
    name = "kantata"

    def fetch_token(self) -> str:
        answer = self.http.post(f"{self.base_url}/oauth/token", json={"grant_type": "client_credentials", **CLIENT})
        answer.raise_for_status()
        return answer.json()["access_token"]

    def create(self, collection: str, singular: str, fields: dict[str, Any]) -> dict[str, Any]:
        answer = self.request("POST", f"/api/v1/{collection}", json={singular: fields}, what=f"create {singular}")
        return next(iter(answer[collection].values()))

    def update(self, collection: str, singular: str, record_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        answer = self.request(
            "PUT", f"/api/v1/{collection}/{record_id}", json={singular: fields}, what=f"update {singular}"
        )
        return next(iter(answer[collection].values()))

    def index(self, collection: str, **params: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.request(
                "GET", f"/api/v1/{collection}", params={**params, "per_page": 200, "page": page}, what=collection
            )
            objects = answer.get(collection, {})
            rows += [objects[r["id"]] for r in answer.get("results", []) if r.get("key") == collection]
            if page >= int(answer.get("meta", {}).get("page_count", 1) or 1):
                return rows
            page += 1

    def workspaces_by_key(self) -> dict[str, dict[str, Any]]:
        """pscsync's projects, by the key it wrote as the workspace's external reference."""
        found = {}
        for ref in self.index("external_references", service_name="pscsync", subject_type="Workspace"):
            found[ref.get("service_model_ref", "")] = {"id": str(ref.get("subject_id"))}
        return found


# NetSuite -------------------------------------------------------------------------------------------
class NetSuite(Driver):
    name = "netsuite"
    RECORD = "/services/rest/record/v1"

    def fetch_token(self) -> str:
        token_url = f"{self.base_url}/services/rest/auth/oauth2/v1/token"
        now = int(time.time())
        assertion = sign_assertion(
            {"iss": "sandbox-client", "scope": ["rest_webservices"], "aud": token_url, "iat": now, "exp": now + 300},
            private_key_pem=NETSUITE_KEY.read_text(),
            kid="sandbox-certificate",
        )
        answer = self.http.post(
            token_url,
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            },
        )
        answer.raise_for_status()
        return answer.json()["access_token"]

    def create(self, record_type: str, fields: dict[str, Any]) -> str:
        response = self.request("POST", f"{self.RECORD}/{record_type}", json=fields, what=f"create {record_type}")
        return response.headers["Location"].rsplit("/", 1)[-1]

    def update(self, record_type: str, record_id: str, fields: dict[str, Any]) -> None:
        self.request("PATCH", f"{self.RECORD}/{record_type}/{record_id}", json=fields, what=f"update {record_type}")

    def get(self, record_type: str, record_id: str) -> dict[str, Any]:
        return self.request("GET", f"{self.RECORD}/{record_type}/{record_id}", what=f"read {record_type}")

    def suiteql(self, query: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            answer = self.request(
                "POST",
                "/services/rest/query/v1/suiteql",
                params={"limit": 1000, "offset": offset},
                json={"q": query},
                headers={"Prefer": "transient"},
                what="SuiteQL",
            )
            rows += answer.get("items", [])
            if not answer.get("hasMore"):
                return rows
            offset += len(answer.get("items", [])) or 1000


# Business Central --------------------------------------------------------------------------------
class BusinessCentral(Driver):
    name = "businesscentral"

    def fetch_token(self) -> str:
        answer = self.http.post(
            f"{self.base_url}/{BC_TENANT}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "scope": "https://api.businesscentral.dynamics.com/.default",
                **CLIENT,
            },
        )
        answer.raise_for_status()
        return answer.json()["access_token"]

    def path(self, entity_set: str) -> str:
        return f"/v2.0/{BC_TENANT}/{BC_ENVIRONMENT}/api/v2.0/companies({BC_COMPANY})/{entity_set}"

    def create(self, entity_set: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", self.path(entity_set), json=fields, what=f"create {entity_set}")

    def list(self, entity_set: str, odata_filter: str = "") -> list[dict[str, Any]]:
        params = {"$filter": odata_filter} if odata_filter else {}
        answer = self.request("GET", self.path(entity_set), params=params, what=entity_set)
        rows = list(answer.get("value", []))
        while answer.get("@odata.nextLink"):
            answer = self.request("GET", answer["@odata.nextLink"], what=f"{entity_set} page")
            rows += answer.get("value", [])
        return rows

    def update(self, entity_set: str, record: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "PATCH",
            self.path(f"{entity_set}({record['id']})"),
            json=fields,
            headers={"If-Match": record.get("@odata.etag", "*")},
            what=f"update {entity_set}",
        )

    def post_invoice(self, invoice_id: str) -> None:
        self.request(
            "POST",
            self.path(f"salesInvoices({invoice_id})/Microsoft.NAV.post"),
            headers={"If-Match": "*"},
            what="post sales invoice",
        )


# Dynamics 365 Finance ---------------------------------------------------------------------------
class DynamicsFinance(Driver):
    """D365 Finance's OData data entities, across legal entities (`cross-company=true`)."""

    name = "dynamicsfinance"

    def fetch_token(self) -> str:
        answer = self.http.post(
            f"{self.base_url}/{D365_TENANT}/oauth2/v2.0/token",
            data={"grant_type": "client_credentials", "scope": f"{self.base_url}/.default", **CLIENT},
        )
        answer.raise_for_status()
        return answer.json()["access_token"]

    def list(self, entity_set: str, odata_filter: str = "") -> list[dict[str, Any]]:
        params = {"cross-company": "true", **({"$filter": odata_filter} if odata_filter else {})}
        answer = self.request("GET", f"/data/{entity_set}", params=params, what=entity_set)
        rows = list(answer.get("value", []))
        while answer.get("@odata.nextLink"):
            answer = self.request("GET", answer["@odata.nextLink"], what=f"{entity_set} page")
            rows += answer.get("value", [])
        return rows

    def create(self, entity_set: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "POST", f"/data/{entity_set}", params={"cross-company": "true"}, json=fields, what=f"create {entity_set}"
        )

    def post_invoice(self, area: str, invoice_id: str) -> None:
        """The accountant posts the free text invoice (D365 offers no OData action for it; the
        sandbox's control API stands in for the posting form)."""
        self.request(
            "POST",
            "/_sandbox/post-invoice",
            json={"dataAreaId": area, "InvoiceIdentifier": int(invoice_id)},
            what="post free text invoice",
        )


def drivers_for(urls: dict[str, str], *, patience: float = 2.0) -> dict[str, Driver]:
    """A driver per sandbox given; the German entity's (its Kantata account, D365) when present."""
    client = httpx.Client(timeout=15)
    drivers: dict[str, Driver] = {
        "salesforce": Salesforce(urls["salesforce"], client=client, patience=patience),
        "kantata": Kantata(urls["kantata"], client=client, patience=patience),
        "netsuite": NetSuite(urls["netsuite"], client=client, patience=patience),
        "businesscentral": BusinessCentral(urls["businesscentral"], client=client, patience=patience),
    }
    if urls.get("kantata-de"):
        drivers["kantata-de"] = Kantata(urls["kantata-de"], client=client, patience=patience)
        drivers["kantata-de"].name = "kantata-de"
    if urls.get("dynamicsfinance"):
        drivers["dynamicsfinance"] = DynamicsFinance(urls["dynamicsfinance"], client=client, patience=patience)
    return drivers
