"""The live trickle: after the simulated history, the firm goes on in real time.

Every `every` seconds one activity happens today, chosen by a generator seeded from the plan's
seed: a new deal (whose later life is queued in real time), a deal moving a stage, a deal won or
lost, a day's time approved on a running project, a billing run, or finance's round (post,
collect, and the operators' look at the workbench). Anything queued that falls due runs too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import time

from demo.simulation.plan import ENTITIES, STAGES, Action, _client_name, _deal, entity_for
from demo.simulation.simulator import Simulation


def trickle_step(sim: Simulation, rng: random.Random, n: int) -> str:
    now = dt.datetime.now(dt.UTC)
    sim.now = now
    today = (now - sim.settings.start).days
    sim.run_until(now)  # queued life of earlier deals, incident ends, deferred work
    open_deals = [d for d in sim.deals.values() if not d.won and not d.data.get("closed")]
    running = [d for d in sim.deals.values() if d.won]
    roll = rng.random()
    if roll < 0.2 or not open_deals:
        entity = entity_for(rng.random(), sim.options)
        market = ENTITIES[entity]
        account_ref = f"acct-live-{n}"
        taken = {a["name"] for a in sim.accounts.values()}
        account = Action(
            today,
            0,
            "account_create",
            account_ref,
            {
                "name": _client_name(rng, entity, taken),
                "entity": entity,
                "number": f"{entity.upper()}-L{n}",
                "country": market["country"],
                "tax_profile": market["tax_profiles"][0],
                "parent": None,
                "anomalies": [],
            },
        )
        sim.execute(account, 0)
        horizon = dataclasses.replace(sim.options, days=today + 180)  # its whole life, in real time
        actions = _deal(
            rng,
            horizon,
            f"deal-live-{n}",
            account_ref,
            entity,
            today,
            False,
            sim.plan.people,
            sim.settings.start.weekday(),
        )
        first, later = actions[0], actions[1:]
        sim.execute(first, 0)
        for action in later:
            sim.push(sim.settings.start + dt.timedelta(days=action.day, minutes=action.minute), action)
        return f"new deal {first.data['name']} ({entity})"
    if roll < 0.45:
        deal = rng.choice(open_deals)
        stages = [s for s, _ in STAGES]
        current = deal.data.get("live_stage", deal.data["stage"])
        index = stages.index(current) if current in stages else 0
        if index + 1 < len(stages):
            stage, probability = STAGES[index + 1]
            sim.execute(Action(today, 0, "deal_stage", deal.ref, {"stage": stage, "probability": probability}), 0)
            deal.data["live_stage"] = stage
            return f"{deal.ref} moved to {stage}"
        deal.data["closed"] = True
        if rng.random() < sim.options.win_rate:
            start_day = today + (7 - now.weekday())
            sim.execute(
                Action(
                    today,
                    0,
                    "deal_won",
                    deal.ref,
                    {"contract_start_day": start_day, "contract_end_day": start_day + 83},
                ),
                0,
            )
            return f"{deal.ref} won"
        sim.execute(Action(today, 0, "deal_lost", deal.ref, {}), 0)
        return f"{deal.ref} lost"
    if roll < 0.7 and running:
        deal = rng.choice(running)
        monday = today - now.weekday()
        team = deal.data["team"]
        entries = [{"person": p, "hours": rng.randint(4, 16)} for p in team]
        sim.execute(
            Action(
                today, 0, "week_time", deal.ref, {"week_start_day": monday - 7, "entries": entries, "anomalies": []}
            ),
            0,
        )
        return f"time approved on {deal.ref}"
    if roll < 0.8:
        sim.execute(Action(today, 0, "billing_run", "", {}), 0)
        return "billing run"
    sim.execute(Action(today, 0, "finance_round", "", {}), 0)
    return "finance round"


def trickle_forever(sim: Simulation, *, every: float, count: int = 0) -> None:
    rng = random.Random(sim.options.seed * 7919 + 1)
    n = 0
    while count == 0 or n < count:
        n += 1
        what = trickle_step(sim, rng, n)
        sim.echo(f"  live {dt.datetime.now(dt.UTC):%H:%M:%S}: {what}")
        time.sleep(every)
