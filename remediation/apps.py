from __future__ import annotations

from django.apps import AppConfig


class RemediationConfig(AppConfig):
    name = "remediation"
    verbose_name = "Exception workbench"

    def ready(self) -> None:
        # The engine knows no screen: the workbench listens to handoff saves instead of the
        # runner calling it (DESIGN.md, which way imports run). Status changes made with
        # QuerySet.update() send no signal; remediation.services.exceptions_reconcile repairs those.
        from django.db.models.signals import post_save

        from pscsync.models import Handoff

        post_save.connect(_handoff_saved, sender=Handoff, dispatch_uid="remediation.exception_sync")


def _handoff_saved(sender: type, instance: object, created: bool, **kwargs: object) -> None:
    from remediation.services import exception_sync

    if created and getattr(instance, "status", "") != "needs_attention":
        return  # a new handoff has no exception to keep in step
    exception_sync(instance)  # type: ignore[arg-type]
