"""Simulated ops staff: they sign in to pscsync as the demo `operator`, read the exceptions
through pscsync's own HTTP API (the workbench's, `/api/v1/exceptions/`), fix the data in the
source system where the cause is bad data, then resubmit — after a delay, like people do.

They never touch pscsync's tables: every read and action is an HTTP call a person could make.
"""

from __future__ import annotations

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
        """Every open exception the operator may see (all pages)."""
        rows: list[dict[str, Any]] = []
        url = "/api/v1/exceptions/?page_size=200"
        while url:
            answer = self.call("GET", url)
            if answer.status_code == 404:
                raise WorkbenchUnavailable("this pscsync has no exception API (/api/v1/exceptions/)")
            answer.raise_for_status()
            body = answer.json()
            rows += body.get("results", body if isinstance(body, list) else [])
            url = body.get("next") if isinstance(body, dict) else None
            if url and url.startswith(self.web_url):
                url = url[len(self.web_url) :]
        return rows

    def resubmit(self, exception_id: int, comment: str) -> int:
        answer = self.call("POST", f"/api/v1/exceptions/{exception_id}/resubmit/", json={"comment": comment})
        if answer.status_code == 404:
            raise WorkbenchUnavailable("this pscsync has no resubmit endpoint")
        return answer.status_code


def _csrf_from_cookies(client: httpx.Client) -> str:
    for cookie in client.cookies.jar:
        if cookie.name.endswith("csrftoken"):
            return cookie.value or ""
    return ""
