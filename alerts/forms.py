"""The form of an alert subscription."""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.core.validators import validate_email

from alerts.models import AlertSubscription
from connectors.egress import DestinationRefused, check_public_url
from pscsync.models import LegalEntity


class AlertSubscriptionForm(forms.ModelForm):
    event_types = forms.MultipleChoiceField(
        choices=AlertSubscription.EventType.choices,
        widget=forms.CheckboxSelectMultiple,
        label="Send",
        help_text="An SLA breach is measured against each flow's SLA (Dashboards → Settings), as on the dashboards.",
    )
    legal_entities = forms.ModelMultipleChoiceField(
        queryset=LegalEntity.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Only for these legal entities",
    )

    class Meta:
        model = AlertSubscription
        fields = [
            "name",
            "channel",
            "target",
            "event_types",
            "all_entities",
            "legal_entities",
            "spike_count",
            "spike_window_minutes",
            "stuck_minutes",
            "mismatch_min_amount",
            "digest_minutes",
            "is_active",
        ]
        labels = {
            "all_entities": "All legal entities",
            "target": "E-mail address or webhook URL",
            "stuck_minutes": "Stuck after (minutes)",
            "spike_count": "Spike: exceptions",
            "spike_window_minutes": "Spike: within (minutes)",
            "mismatch_min_amount": "Mismatch alert from (amount)",
            "digest_minutes": "Digest at most every (minutes)",
            "is_active": "Active",
        }

    def __init__(self, *args: Any, entities: Any, sees_all: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sees_all = sees_all
        field = self.fields["legal_entities"]
        assert isinstance(field, forms.ModelMultipleChoiceField)  # the model's many-to-many
        field.queryset = entities
        if not sees_all:
            del self.fields["all_entities"]
        if self.instance.pk:
            self.fields["channel"].disabled = True

    def clean_target(self) -> str:
        target = self.cleaned_data["target"].strip()
        channel = self.cleaned_data.get("channel") or self.instance.channel
        if channel == AlertSubscription.Channel.EMAIL:
            validate_email(target)
            return target
        try:
            check_public_url(target, allow_loopback=settings.ALERT_WEBHOOK_ALLOW_LOOPBACK)
        except DestinationRefused as exc:
            raise forms.ValidationError(exc.message) from None
        return target

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("all_entities") and not data.get("legal_entities"):
            self.add_error(
                "legal_entities",
                "Choose the legal entities to alert on" + (", or all of them." if self.sees_all else "."),
            )
        return data
