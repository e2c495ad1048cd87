"""The workbench groups handoffs by cause: same flow, same error class, same normalised message."""

from __future__ import annotations

from remediation.selectors import cause_signature


def test_variable_parts_of_a_message_are_blanked_but_status_codes_stay() -> None:
    a = cause_signature(
        "upsert_invoice: the target rejected the request (422): customer 'Acme' not found for INV-OPP-1042"
    )
    b = cause_signature(
        "upsert_invoice: the target rejected the request (422): customer 'Globex' not found for INV-OPP-7"
    )
    assert a == b
    assert "(422)" in a
    assert cause_signature("amount 1200.50 exceeds budget") == cause_signature("amount 99.10 exceeds budget")
    assert cause_signature("the target failed with 503") != cause_signature("the target failed with 502")
