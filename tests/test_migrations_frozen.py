"""Rules frozen into data migrations (they may not import live app code) give what the live rule
gave when they were written: checked on inputs worked through by hand."""

from __future__ import annotations

import datetime as dt
import importlib
import json
from collections import defaultdict
from types import SimpleNamespace

demand = importlib.import_module("dashboards.migrations.0003_demand_months")
entity = importlib.import_module("dashboards.migrations.0004_entity_rollups")
chain = importlib.import_module("pscsync.migrations.0007_audit_hash_chain")


def test_the_frozen_demand_rule_spreads_weighted_hours_over_the_contract_months() -> None:
    # 120 h of consultant at 50% over Jan-Mar: 20 h a month; the deal ends in March, with a plan.
    plan = json.dumps([{"role": "consultant", "hours": 120}])
    details = {"contract_start": "2026-01-10", "contract_end": "2026-03-20", "probability": 50}
    fact = {"legal_entity_id": 1, "service_line": "Advisory", "connection_id": 3, "details": details}
    deltas = defaultdict(lambda: [0.0, 0, 0])
    demand.add_deal(deltas, {**fact, "details": {**details, "resource_plan_text": plan}}, +1)
    assert dict(deltas) == {
        (1, "Advisory", 3, "consultant", "2026-01"): [20.0, 0, 0],
        (1, "Advisory", 3, "consultant", "2026-02"): [20.0, 0, 0],
        (1, "Advisory", 3, "consultant", "2026-03"): [20.0, 0, 0],
        (1, "Advisory", 3, "", "2026-03"): [0.0, 1, 0],
    }
    # The live rule, on the same fact, agrees.
    from dashboards.demand import add_deal

    live = defaultdict(lambda: [0.0, 0, 0])
    add_deal(live, {**fact, "details": {**details, "resource_plan_text": plan}}, +1)
    assert dict(live) == dict(deltas)
    # No plan: only the default-plan ending counts; a closed deal counts nothing.
    none = defaultdict(lambda: [0.0, 0, 0])
    demand.add_deal(none, fact, +1)
    demand.add_deal(none, {**fact, "details": {**details, "is_closed": True}}, +1)
    assert dict(none) == {(1, "Advisory", 3, "", "2026-03"): [0.0, 0, 1]}


def test_the_frozen_entity_sums_add_two_service_lines_of_one_day() -> None:
    day = dt.date(2026, 11, 2)
    base = {name: 0 for name in entity.ENTITY_SUMS}
    rows = [
        SimpleNamespace(
            day=day,
            flow="f",
            legal_entity_id=1,
            currency="USD",
            **{**base, "started": 2, "finished": 1},
            hist={"4": 1},
            extra_hist={},
        ),
        SimpleNamespace(
            day=day,
            flow="f",
            legal_entity_id=1,
            currency="USD",
            **{**base, "started": 3},
            hist={"4": 2, "8": 1},
            extra_hist=None,
        ),
    ]
    [row] = entity.entity_rollup_values(rows)
    assert (row["started"], row["finished"], row["hist"], row["extra_hist"]) == (5, 1, {"4": 3, "8": 1}, {})


def test_the_frozen_unkeyed_chain_hash_is_the_audit_modules() -> None:
    from pscsync.audit import entry_hash

    entry = SimpleNamespace(
        created_at=dt.datetime(2026, 11, 1, 9, tzinfo=dt.UTC),
        actor_id=4,
        actor_label="",
        action="x.save",
        object_type="a.b",
        object_id="7",
        object_repr="B 7",
        legal_entity_id=None,
        before={"a": 1},
        after=None,
        comment="why",
        remote_addr="10.0.0.1",
    )
    fields = {k: getattr(entry, k) for k in vars(entry)}
    assert chain.entry_hash_of(entry, "p") == entry_hash(key=None, prev_hash="p", **fields)
