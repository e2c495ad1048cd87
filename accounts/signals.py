"""Framework glue: record sessions at sign-in and sign-out; disabling a user ends their sessions."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver

from accounts.sessions import session_ended, session_started, sessions_end


@receiver(user_logged_in)
def _on_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "session"):
        session_started(request, user)


@receiver(user_logged_out)
def _on_logout(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if request is not None and hasattr(request, "session"):
        session_ended(request.session.session_key, "signed out")


@receiver(pre_save, sender=get_user_model())
def _remember_active(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.pk:
        instance._pscsync_was_active = sender.objects.filter(pk=instance.pk).values_list("is_active", flat=True).first()


@receiver(post_save, sender=get_user_model())
def _on_disable(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    if not created and getattr(instance, "_pscsync_was_active", False) and not instance.is_active:
        sessions_end(instance, "user disabled")
