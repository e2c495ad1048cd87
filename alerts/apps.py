from __future__ import annotations

from django.apps import AppConfig


class AlertsConfig(AppConfig):
    name = "alerts"
    verbose_name = "Outbound alerts"

    def ready(self) -> None:
        # A schema check that finds a new drift asks for a scan at once (pscsync.governance
        # cannot import this app: the engine knows nothing of the alerts).
        from pscsync.governance import findings_found

        findings_found.connect(_scan_for_findings, dispatch_uid="alerts.scan_for_findings")


def _scan_for_findings(**kwargs: object) -> int:
    from alerts.services import alerts_scan

    return alerts_scan()
