"""Simulated ops staff: they sign in to pscsync as the demo `operator`, read the exceptions
through pscsync's own HTTP API (the workbench's, `/api/v1/exceptions/`), fix the data in the
source system where the cause is bad data, then resubmit; or resubmit with a corrected value
(the workbench's edit); or resolve what they handled by hand — after a delay, like people do.

They never touch pscsync's tables: every read and action is an HTTP call a person could make.
"""

from __future__ import annotations

import html
import re
from typing import Any

import httpx


class WorkbenchUnavailable(RuntimeError):
    """pscsync's exception API is not there (older build) or refused us."""


class Workbench:
    """pscsync's web interface as the operator uses it: session sign-in, then the JSON API."""

    def __init__(self, web_url: str, username: str, password: str) -> None:
        self.web_url = web_url.rstrip("/")
        self.username, self.password = username, password
        self.http = httpx.Client(base_url=self.web_url, timeout=20, follow_redirects=False)
        self.signed_in = False

    def sign_in(self) -> None:
        page = self.http.get("/login/")
        page.raise_for_status()
        token = self.http.cookies.get("csrftoken") or _csrf_from_cookies(self.http)
        answer = self.http.post(
            "/login/",
            data={"username": self.username, "password": self.password, "csrfmiddlewaretoken": token},
            headers={"Referer": f"{self.web_url}/login/"},
        )
        if answer.status_code not in (302, 303):
            raise WorkbenchUnavailable(f"sign-in as {self.username} refused (HTTP {answer.status_code})")
        self.signed_in = True

    def _csrf(self) -> dict[str, str]:
        return {"X-CSRFToken": _csrf_from_cookies(self.http), "Referer": f"{self.web_url}/"}

    def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if not self.signed_in:
            self.sign_in()
        headers = {"Accept": "application/json", **(self._csrf() if method != "GET" else {})}
        answer = self.http.request(method, path, headers=headers, **kwargs)
        if answer.status_code in (401, 403) and "login" in answer.headers.get("location", "") + answer.text[:200]:
            self.signed_in = False
            self.sign_in()
            answer = self.http.request(method, path, headers=headers, **kwargs)
        if answer.status_code in (301, 302) and "/login" in answer.headers.get("location", ""):
            self.signed_in = False
            raise WorkbenchUnavailable(f"{path}: not signed in")
        return answer

    def exceptions(self) -> list[dict[str, Any]]:
        """Every open exception the operator may see: from the REST API when this pscsync has it,
        else from the handoff list page filtered on "needs attention"."""
        rows: list[dict[str, Any]] = []
        url: str | None = "/api/v1/exceptions/?page_size=200"
        while url:
            answer = self.call("GET", url)
            if answer.status_code == 404:
                return self._exceptions_from_pages()
            answer.raise_for_status()
            body = answer.json()
            rows += body.get("results", body if isinstance(body, list) else [])
            url = body.get("next") if isinstance(body, dict) else None
            if url and url.startswith(self.web_url):
                url = url[len(self.web_url) :]
        return rows

    def _exceptions_from_pages(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for page in range(1, 21):
            answer = self.call("GET", f"/handoffs/?status=needs_attention&page={page}")
            if answer.status_code != 200:
                raise WorkbenchUnavailable(f"the handoff list answered HTTP {answer.status_code}")
            for flow, pk, key in ROW.findall(answer.text):
                rows.append({"id": int(pk), "flow": flow, "business_key": html.unescape(key), "last_error_class": ""})
            if "Older →" not in answer.text:
                break
        return rows

    def resubmit(self, exception_id: int, comment: str, *, reread: bool) -> int:
        """Resubmit through the workbench's retry dialog (re-mapping from the source when the
        source was corrected), else through the REST API."""
        form = f"/workbench/handoffs/{exception_id}/resubmit/"
        mode = "remap" if reread else "stored"
        page = self.call("GET", form)
        if page.status_code == 200:
            # The dialog shows a review first (what will be sent, with a token of what was
            # reviewed); pressing "Resubmit" on it posts the choice again with that token.
            review = self.call("POST", form, data={"mode": mode, "reason": comment})
            token = REVIEWED.search(review.text or "")
            if review.status_code != 200 or token is None:
                return max(review.status_code, 400)
            answer = self.call(
                "POST",
                form,
                data={"mode": mode, "reason": comment, "confirm": "yes", "reviewed": html.unescape(token.group(1))},
            )
            # Done: a redirect to the handoff's page. The form again (200/400): refused.
            return 200 if answer.status_code in (302, 303) else max(answer.status_code, 400)
        return self._api(exception_id, "resubmit", {"mode": mode, "reason": comment})

    def document(self, exception_id: int) -> dict[str, Any] | None:
        """The document the exception's read step holds (what an edit replaces), from the API."""
        answer = self.call("GET", f"/api/v1/exceptions/{exception_id}/")
        if answer.status_code != 200:
            return None
        return answer.json().get("document") or None

    def resubmit_edited(self, exception_id: int, document: dict[str, Any], comment: str) -> int:
        """Resubmit with a corrected value: the edited document replaces what the read step read."""
        return self._api(exception_id, "resubmit", {"mode": "edit", "document": document, "reason": comment})

    def resolve(self, exception_id: int, comment: str) -> int:
        """Mark it resolved by a person (handled outside pscsync), with the reason in the audit trail."""
        return self._api(exception_id, "resolve", {"reason": comment})

    def _api(self, exception_id: int, action: str, body: dict[str, Any]) -> int:
        answer = self.call("POST", f"/api/v1/exceptions/{exception_id}/{action}/", json=body)
        if answer.status_code == 404:
            raise WorkbenchUnavailable(f"this pscsync has no exception API to {action} with")
        return answer.status_code


REVIEWED = re.compile(r'name="reviewed" value="([^"]*)"')
ROW = re.compile(r"<td>([a-z-]+)</td>\s*<td><a href=\"/handoffs/(\d+)/\">([^<]+)</a></td>")


def _csrf_from_cookies(client: httpx.Client) -> str:
    for cookie in client.cookies.jar:
        if cookie.name.endswith("csrftoken"):
            return cookie.value or ""
    return ""
