"""Liveness, readiness and the beat leader lease, against the real database and Redis."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client

from ops.beat import lease_acquire, lease_release
from ops.health import BEAT_LEADER, SWEEPER, heartbeat_record, worker_heartbeat_name
from ops.models import Heartbeat

pytestmark = pytest.mark.django_db


def _all_beating() -> None:
    heartbeat_record(name=worker_heartbeat_name("w1@host"))
    heartbeat_record(name=SWEEPER)
    assert lease_acquire(holder="beat-a", seconds=30)


def _age(name: str, seconds: int) -> None:
    row = Heartbeat.objects.get(name=name)
    row.seen_at -= dt.timedelta(seconds=seconds)
    row.save()


def test_healthz_answers_without_reading_anything(django_assert_num_queries) -> None:
    with django_assert_num_queries(0):
        response = Client().get("/healthz")
    assert response.status_code == 200 and response.json() == {"ok": True}


def test_readyz_is_ready_when_everything_beats() -> None:
    _all_beating()
    response = Client().get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["ok"] is True and body["failing"] == []
    assert set(body["checks"]) >= {"database", "broker", "worker", "beat", "sweeper"}


def test_readyz_names_every_missing_process_when_nothing_ran() -> None:
    response = Client().get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["worker", "beat", "sweeper"]
    assert body["checks"]["worker"]["detail"] == "no worker heartbeat has been seen"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]


def test_readyz_names_a_stale_worker_and_a_stale_sweep(settings) -> None:
    _all_beating()
    _age(worker_heartbeat_name("w1@host"), settings.READY_WORKER_SECONDS + 5)
    _age(SWEEPER, settings.READY_SWEEP_SECONDS + 5)
    body = Client().get("/readyz").json()
    assert body["failing"] == ["worker", "sweeper"]
    assert "more than" in body["checks"]["worker"]["detail"]


def test_readyz_fails_when_the_beat_lease_has_expired() -> None:
    _all_beating()
    lease_release(holder="beat-a")
    body = Client().get("/readyz").json()
    assert body["failing"] == ["beat"]
    assert body["checks"]["beat"]["detail"] == "no beat holds the leader lease (it expired)"


def test_readyz_names_an_unreachable_broker(settings) -> None:
    _all_beating()
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    body = Client().get("/readyz").json()
    assert body["failing"] == ["broker"]
    assert "127.0.0.1:1 does not answer" in body["checks"]["broker"]["detail"]


def test_one_holder_leads_until_its_lease_expires_or_it_hands_over() -> None:
    assert lease_acquire(holder="beat-a", seconds=30)
    assert not lease_acquire(holder="beat-b", seconds=30)  # a still leads
    assert lease_acquire(holder="beat-a", seconds=30)  # renewal
    lease_release(holder="beat-b")  # not b's to release: nothing changes
    assert not lease_acquire(holder="beat-b", seconds=30)
    lease_release(holder="beat-a")
    assert lease_acquire(holder="beat-b", seconds=30)
    assert not lease_acquire(holder="beat-a", seconds=30)
    assert Heartbeat.objects.get(name=BEAT_LEADER).holder == "beat-b"


def test_a_dead_leaders_lease_is_taken_over_once_expired() -> None:
    assert lease_acquire(holder="beat-a", seconds=30)
    Heartbeat.objects.filter(name=BEAT_LEADER).update(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    assert lease_acquire(holder="beat-b", seconds=30)
