"""Single sign-on end to end against a local OpenID Connect provider (tests/oidc_provider.py):
real HTTP between pscsync and the provider (token, userinfo, JWKS), the browser's two redirects
followed by hand. Roles and legal entities come from the provider's groups by the rules admins
edit at /account/sso/; a person whose groups change gets the new access at the next sign-in."""

from __future__ import annotations

import httpx
import pytest
from django.test import Client

from accounts.models import IdentityGroupRule
from pscsync.access import entity_ids_for, role_of
from pscsync.models import AuditEntry
from tests.helpers import handoffs_per_entity
from tests.oidc_provider import Provider
from tests.twofactor import VerifiedClient

pytestmark = pytest.mark.django_db


@pytest.fixture
def provider(settings):
    provider = Provider()
    provider.start()
    for name, value in provider.settings().items():
        setattr(settings, name, value)
    yield provider
    provider.stop()


def sso_sign_in(client: Client, provider: Provider, **person: object):
    """What a browser does: our start page → the provider → back to our callback."""
    provider.person = {"sub": f"sub-{person['preferred_username']}", **person}
    start = client.get("/oidc/authenticate/")
    assert start.status_code == 302 and start["Location"].startswith(provider.url), start
    at_provider = httpx.get(start["Location"], follow_redirects=False)
    assert at_provider.status_code == 302
    callback = at_provider.headers["Location"].removeprefix("http://testserver")
    return client.get(callback)


def test_an_admin_adds_a_user_for_one_entity_who_signs_in_through_the_provider(
    provider, admin, entities, echo_connection
) -> None:
    handoffs_per_entity(echo_connection, entities)
    admin_client = VerifiedClient()
    admin_client.force_login(admin)
    form = {"username": "sam.uk", "email": "sam@example.com", "role": "viewer", "is_active": "on"}
    response = admin_client.post("/account/users/new/", {**form, "legal_entities": [entities["uk"].pk]})
    assert response.status_code == 302
    sam = Client()
    page = sam.get("/login/").content.decode()
    assert "Sign in with single sign-on" in page
    done = sso_sign_in(sam, provider, preferred_username="sam.uk", email="sam@example.com")
    assert done.status_code == 302 and done["Location"] == "/", done.get("Location")
    handoffs = sam.get("/handoffs/").content.decode()
    assert "OPP-UK" in handoffs and "OPP-US" not in handoffs
    assert AuditEntry.objects.filter(action="login.succeeded", comment="single sign-on").exists()


def test_groups_decide_role_and_entities_and_a_change_applies_at_the_next_sign_in(provider, admin, entities) -> None:
    ops_us = IdentityGroupRule.objects.create(group="ops-us", role="operator")
    ops_us.legal_entities.set([entities["us"]])
    IdentityGroupRule.objects.create(group="finance", role="viewer", all_entities=True)
    olga = Client()
    assert sso_sign_in(olga, provider, preferred_username="olga", groups=["ops-us", "staff"]).status_code == 302
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username="olga")
    assert role_of(user) == "operator" and entity_ids_for(user) == [entities["us"].pk]
    assert not user.has_usable_password()
    # The provider's multi-factor sign-in counts as the second factor: the workbench opens.
    assert olga.get("/workbench/").status_code == 200

    # Moved to finance at the provider: viewer of every entity from the next sign-in on.
    olga.post("/logout/")
    assert sso_sign_in(olga, provider, preferred_username="olga", groups=["finance"]).status_code == 302
    user = get_user_model().objects.get(username="olga")
    assert role_of(user) == "viewer" and entity_ids_for(user) is None
    assert olga.get("/workbench/").status_code == 403

    # Left every mapped group: no role, no scope, and the sign-in is refused.
    olga.post("/logout/")
    refused = sso_sign_in(olga, provider, preferred_username="olga", groups=["staff"])
    assert refused.status_code == 302 and "sso=failed" in refused["Location"]
    user = get_user_model().objects.get(username="olga")
    assert role_of(user) is None and entity_ids_for(user) == []
    assert olga.get("/handoffs/").status_code == 302  # to the sign-in page
    mapped = AuditEntry.objects.filter(action="user.sso_mapped", object_id=str(user.pk)).order_by("pk")
    assert [e.after["role"] for e in mapped] == ["operator", "viewer", None]


def test_a_stranger_to_every_rule_gets_no_account_and_no_mfa_means_our_own_second_factor(provider, entities) -> None:
    rule = IdentityGroupRule.objects.create(group="ops-us", role="operator")
    rule.legal_entities.set([entities["us"]])
    from django.contrib.auth import get_user_model

    refused = sso_sign_in(Client(), provider, preferred_username="mallory", groups=["contractors"])
    assert "sso=failed" in refused["Location"]
    assert not get_user_model().objects.filter(username="mallory").exists()
    provider.amr = ["pwd"]  # the provider asked for a password only
    pat = Client()
    assert sso_sign_in(pat, provider, preferred_username="pat", groups=["ops-us"]).status_code == 302
    assert pat.get("/workbench/")["Location"].startswith("/account/two-factor/")


def test_only_an_admin_of_every_entity_edits_the_rules(client, admin, entities) -> None:
    from pscsync.services import user_provision

    ukadmin = user_provision(
        username="ulla.ukadmin", password="a-long-test-password", role="admin", entities=[entities["uk"]]
    )
    client.force_login(ukadmin)
    assert client.post("/account/sso/", {"group": "x", "role": "admin", "all_entities": "on"}).status_code == 403
    client.force_login(admin)
    response = client.post(
        "/account/sso/", {"group": "ops-uk", "role": "operator", "legal_entities": [entities["uk"].pk]}
    )
    assert response.status_code == 302
    rule = IdentityGroupRule.objects.get(group="ops-uk")
    assert list(rule.legal_entities.values_list("code", flat=True)) == ["uk"]
    assert AuditEntry.objects.filter(action="sso_rule.save", actor=admin).exists()
    assert client.post("/account/sso/", {"group": "none", "role": "viewer"}).status_code == 200  # no entity: refused
