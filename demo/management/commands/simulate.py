"""python manage.py simulate --days 90 --seed 7: the demo firm lives through the last N days.

Drives the vendor sandboxes over their APIs (never pscsync's tables) and steers pscsync's shared
clock (PSCSYNC_CLOCK=file:<path>) so the engine works in the firm's business time. See
docs/demo-firm.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from demo.simulation.drivers import SANDBOXES, drivers_for
from demo.simulation.plan import Options, scenario_plan, start_of
from demo.simulation.simulator import Settings, Simulation
from demo.simulation.trickle import trickle_forever

RATE_OPTIONS = {
    "missing_tax_profile": "share of new accounts created without a tax profile",
    "unknown_service_line": "share of deals with a service line the ERP does not know",
    "duplicate_customer": "share of new accounts already keyed by hand in the ERP (same name, no external id)",
    "late_time": "share of weeks of time approved after their period closed",
    "fx_date": "share of ERP invoices dated on another day than the PSA billed them",
    "mixed_currency": "share of expenses incurred in EUR (a mixed-currency billing batch)",
    "operator_fix_share": "share of exceptions the simulated operators fix and resubmit",
    "operator_resolve_share": "share of the exceptions they work but cannot correct in a source that they resolve "
    "(handled by hand); the rest is left for the demo's user",
}


class Command(BaseCommand):
    help = "Simulate the demo firm over the last N days against the vendor sandboxes (and, with --trickle, go on live)."

    def add_arguments(self, parser: Any) -> None:
        defaults = Options()
        parser.add_argument("--days", type=int, default=defaults.days)
        parser.add_argument("--seed", type=int, default=defaults.seed)
        parser.add_argument("--deals-per-week", type=float, default=defaults.deals_per_week)
        parser.add_argument(
            "--uk-share", type=float, default=defaults.uk_share, help="share of deals for the UK entity"
        )
        parser.add_argument(
            "--de-share", type=float, default=defaults.de_share, help="share of deals for the German entity"
        )
        parser.add_argument("--win-rate", type=float, default=defaults.win_rate)
        parser.add_argument("--amendment-rate", type=float, default=defaults.amendment_rate)
        for name, text in RATE_OPTIONS.items():
            parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name), help=text)
        parser.add_argument("--erp-outages", type=int, default=defaults.erp_outages, help="ERP outage windows (503)")
        parser.add_argument(
            "--rate-limit-bursts", type=int, default=defaults.rate_limit_bursts, help="rate-limit windows on a vendor"
        )
        parser.add_argument("--operator-delay-hours", type=float, default=defaults.operator_delay_hours)
        parser.add_argument("--no-anomalies", action="store_true", help="a clean firm: every anomaly rate 0")
        parser.add_argument(
            "--day-seconds", type=float, default=2.0, help="wall seconds per simulated day (at least; default 2)"
        )
        parser.add_argument("--settle-seconds", type=float, default=10.0, help="wait for the engine after the last day")
        parser.add_argument(
            "--clock-file", type=Path, default=None, help="the shared clock file (default: PSCSYNC_CLOCK)"
        )
        parser.add_argument("--web", default="", help="pscsync's URL, for the simulated operators (none: no operators)")
        parser.add_argument("--operator", default="operator", help="the operator's username")
        for name in SANDBOXES:
            parser.add_argument(f"--{name}-url", default="", help=f"the {name} sandbox (default: its port)")
        parser.add_argument("--plan-only", action="store_true", help="print the plan as JSON and stop")
        parser.add_argument(
            "--trickle", action="store_true", help="after the history, keep the firm alive in real time"
        )
        parser.add_argument("--trickle-every", type=float, default=20.0, help="seconds between live activities")
        parser.add_argument("--skip-history", action="store_true", help="no history: only the live trickle")
        parser.add_argument("--done-marker", type=Path, default=None, help="a file written when the history is done")

    def handle(self, *args: Any, **opts: Any) -> None:
        fields = {f.name for f in dataclasses.fields(Options)}
        values = {k: v for k, v in opts.items() if k in fields}
        if opts["no_anomalies"]:
            values.update(
                {k: 0.0 for k in RATE_OPTIONS if not k.startswith("operator_")}, erp_outages=0, rate_limit_bursts=0
            )
        for name, value in values.items():
            if name in RATE_OPTIONS and not 0 <= value <= 1:
                raise CommandError(f"--{name.replace('_', '-')} must be between 0 and 1")
        if not (0 <= values["uk_share"] and 0 <= values["de_share"] and values["uk_share"] + values["de_share"] <= 1):
            raise CommandError("--uk-share and --de-share must be at least 0 and add up to at most 1")
        if values["days"] < 1:
            raise CommandError("--days must be at least 1")
        options = Options(**values)
        start = start_of(dt.datetime.now(dt.UTC), options.days)
        plan = scenario_plan(options, start_weekday=start.weekday())
        if opts["plan_only"]:
            self.stdout.write(plan.to_json())
            return
        clock_file = opts["clock_file"]
        if clock_file is None and str(settings.CLOCK).startswith("file:"):
            clock_file = Path(str(settings.CLOCK).removeprefix("file:"))
        urls = {name: opts[f"{name.replace('-', '_')}_url"] or settings.SANDBOX_URLS[name] for name in SANDBOXES}
        password = os.environ.get("DEMO_PASSWORD", "")
        web = opts["web"]
        if web and len(password) < 12:
            raise CommandError("the simulated operators sign in with DEMO_PASSWORD: set it (12+ characters)")
        sim_settings = Settings(
            urls=urls,
            start=start,
            day_seconds=opts["day_seconds"],
            clock_file=clock_file,
            web_url=web,
            operator=(opts["operator"], password) if web else None,
        )
        simulation = Simulation(plan, sim_settings, drivers_for(urls), echo=self.stdout.write)
        counts = plan.counts()
        self.stdout.write(
            f"simulating {options.days} days from {start:%Y-%m-%d} (seed {options.seed}): "
            f"{counts.get('deal_create', 0)} deals planned, {counts.get('week_time', 0)} weeks of time, "
            f"{counts.get('billing_run', 0)} billing runs; clock file: {clock_file or 'none'}"
        )
        started = time.monotonic()
        if opts["skip_history"]:
            simulation.ensure_people()
            simulation.settle(0)
            trickle_forever(simulation, every=opts["trickle_every"])
            return
        simulation.run()
        simulation.settle(opts["settle_seconds"])
        if opts["done_marker"]:
            opts["done_marker"].write_text(f"seed {options.seed}, {options.days} days from {start:%Y-%m-%d}\n")
        wall = time.monotonic() - started
        stats = dict(simulation.stats)
        vendor_calls = {name: d.calls for name, d in simulation.drivers.items()}
        self.stdout.write(f"done in {wall:.1f} s: {simulation.summary()}")
        anomalies = {k.removeprefix("anomaly:"): v for k, v in sorted(stats.items()) if k.startswith("anomaly:")}
        self.stdout.write(f"anomalies injected: {json.dumps(anomalies)}")
        self.stdout.write(
            "SIMULATE_RESULT "
            + json.dumps(
                {
                    "wall_seconds": round(wall, 1),
                    "days": options.days,
                    "seed": options.seed,
                    "vendor_calls": vendor_calls,
                    **{k: v for k, v in stats.items() if not k.startswith("paid:")},
                }
            )
        )
        if opts["trickle"]:
            self.stdout.write(f"the firm goes on living: an activity every {opts['trickle_every']} s (Ctrl-C stops)")
            trickle_forever(simulation, every=opts["trickle_every"])
