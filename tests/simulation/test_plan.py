"""The scenario plan: same seed, same firm; options change what they promise."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from demo.simulation.plan import Options, fx_rate, record_rng, scenario_plan, start_of
from pscsync import clock


def test_the_same_seed_gives_the_same_firm() -> None:
    first = scenario_plan(Options(days=90, seed=7), start_weekday=2)
    second = scenario_plan(Options(days=90, seed=7), start_weekday=2)
    assert first.to_json() == second.to_json()
    assert len(first.actions) > 200
    counts = first.counts()
    assert counts["deal_create"] >= 30 and counts["deal_won"] >= 10 and counts["week_time"] >= 50


def test_another_seed_gives_another_firm() -> None:
    assert scenario_plan(Options(seed=7)).to_json() != scenario_plan(Options(seed=8)).to_json()


def test_the_plan_does_not_depend_on_the_wall_clock(monkeypatch) -> None:
    before = scenario_plan(Options(days=30, seed=3)).to_json()
    monkeypatch.setattr(time, "time", lambda: 4102444800.0)  # 2100-01-01
    assert scenario_plan(Options(days=30, seed=3)).to_json() == before


def test_every_anomaly_appears_at_full_rates_and_none_in_a_clean_firm() -> None:
    noisy = Options(
        days=60,
        seed=11,
        missing_tax_profile=1.0,
        unknown_service_line=1.0,
        duplicate_customer=1.0,
        late_time=1.0,
        mixed_currency=1.0,
        erp_outages=2,
        rate_limit_bursts=3,
    )
    counts = scenario_plan(noisy).counts()
    for anomaly in ("missing_tax_profile", "unknown_service_line", "duplicate_customer", "late_time"):
        assert counts.get(f"anomaly:{anomaly}", 0) > 0, anomaly
    assert counts["erp_outage"] == 2 and counts["rate_limit_burst"] == 3
    clean = Options(
        days=60,
        seed=11,
        missing_tax_profile=0,
        unknown_service_line=0,
        duplicate_customer=0,
        late_time=0,
        mixed_currency=0,
        erp_outages=0,
        rate_limit_bursts=0,
    )
    assert not [k for k in scenario_plan(clean).counts() if k.startswith("anomaly:") or k in ("erp_outage",)]


def test_weeks_of_time_start_on_mondays_and_follow_the_deal_signature() -> None:
    start = dt.datetime(2026, 9, 2, tzinfo=dt.UTC)  # a Wednesday
    plan = scenario_plan(Options(days=90, seed=7, late_time=0), start_weekday=start.weekday())
    won = {a.ref: a for a in plan.actions if a.kind == "deal_won"}
    weeks = [a for a in plan.actions if a.kind == "week_time"]
    assert weeks
    for week in weeks:
        monday = start + dt.timedelta(days=week.data["week_start_day"])
        assert monday.weekday() == 0
        assert week.day == week.data["week_start_day"] + 7  # approved the Monday after
        assert week.data["week_start_day"] >= won[week.ref].data["contract_start_day"]
        assert won[week.ref].day < week.day


def test_late_time_is_approved_in_a_later_month_than_it_was_worked() -> None:
    start = dt.datetime(2026, 9, 2, tzinfo=dt.UTC)
    plan = scenario_plan(Options(days=90, seed=5, late_time=1.0), start_weekday=start.weekday())
    late = [a for a in plan.actions if "late_time" in a.data.get("anomalies", [])]
    assert late
    for action in late:
        worked = (start + dt.timedelta(days=action.data["week_start_day"] + 6)).date()
        approved = (start + dt.timedelta(days=action.day)).date()
        assert (approved.year, approved.month) > (worked.year, worked.month)


def test_choices_about_engine_records_do_not_depend_on_order() -> None:
    assert record_rng(7, "I-a3B000").random() == record_rng(7, "I-a3B000").random()
    assert record_rng(7, "I-a3B000").random() != record_rng(7, "I-a3B001").random()


def test_exchange_rates_are_daily_and_deterministic() -> None:
    day = dt.date(2026, 10, 1)
    assert fx_rate("USD", day) == 1.0
    assert fx_rate("CAD", day) == fx_rate("CAD", day)
    assert fx_rate("CAD", day) != fx_rate("CAD", day + dt.timedelta(days=4))


def test_the_simulation_starts_at_midnight_days_before_now() -> None:
    now = dt.datetime(2026, 11, 27, 15, 30, tzinfo=dt.UTC)
    assert start_of(now, 90) == dt.datetime(2026, 8, 29, tzinfo=dt.UTC)


def test_the_plan_only_command_prints_the_same_plan_twice(capsys) -> None:
    from django.core.management import call_command

    call_command("simulate", "--days", "20", "--seed", "4", "--plan-only")
    first = json.loads(capsys.readouterr().out)
    call_command("simulate", "--days", "20", "--seed", "4", "--plan-only")
    assert json.loads(capsys.readouterr().out) == first
    assert first["options"]["days"] == 20


# The shared file clock ---------------------------------------------------------------------------
def test_the_file_clock_follows_the_file_and_its_changes(tmp_path) -> None:
    path = tmp_path / "clock.json"
    shared = clock.FileClock(path=path)
    assert abs((shared.now() - dt.datetime.now(dt.UTC)).total_seconds()) < 2  # no file: system time
    origin = dt.datetime(2026, 8, 29, 9, 0, tzinfo=dt.UTC)
    clock.clock_file_write(path, origin=origin, speed=3600.0, origin_wall=time.time() - 2)
    assert origin + dt.timedelta(hours=2) <= shared.now() < origin + dt.timedelta(hours=2, minutes=5)
    later = dt.datetime(2026, 9, 15, tzinfo=dt.UTC)
    clock.clock_file_write(path, origin=later, speed=1.0)
    assert later <= shared.now() < later + dt.timedelta(seconds=5)
    path.write_text("{not json")  # a garbled file keeps the last good reading
    assert later <= shared.now() < later + dt.timedelta(seconds=5)


def test_the_clock_setting_accepts_a_file(tmp_path) -> None:
    assert isinstance(clock.clock_from_setting(f"file:{tmp_path / 'c.json'}"), clock.FileClock)
    with pytest.raises(Exception, match="file:<path>"):
        clock.clock_from_setting("file:")
