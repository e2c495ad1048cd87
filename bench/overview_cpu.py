"""CPU per request of one dashboard page, Django process and PostgreSQL backend apart, from
/proc/<pid>/stat (utime + stime): a figure the other tenants of a shared machine move much less
than wall time. Run in a tree against a database given by name (a copy of a bench/largefirm template):

  .venv/bin/python bench/overview_cpu.py --database <a bench copy> --url /dashboards/ --requests 20 [--profile 15]

Prints one JSON line: wall median, CPU per request of the process and of its backend (ms), SQL
statements per request; --profile N: the N functions with the most cumulative time (cProfile)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pagebench

TICK = os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float:
    """utime + stime of a process, in ms (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True, help="a copy of a bench/largefirm template")
    parser.add_argument("--url", default="/dashboards/")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, help="print the N slowest functions (cumulative)")
    parser.add_argument("--sort", default="cumulative", help="cProfile order: cumulative or tottime")
    args = parser.parse_args()
    os.environ.update(pagebench.child_env(args.database))
    pagebench.django_setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = pagebench.logged_in_client("viewer")
    for _ in range(2):  # warm-up: caches, the connection, imports
        assert client.get(args.url).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    walls = []
    own0, db0 = cpu_ms(os.getpid()), cpu_ms(backend)
    for _ in range(args.requests):
        t0 = time.perf_counter()
        client.get(args.url)
        walls.append((time.perf_counter() - t0) * 1000)
    own, db = (cpu_ms(os.getpid()) - own0) / args.requests, (cpu_ms(backend) - db0) / args.requests
    with CaptureQueriesContext(connection) as queries:
        client.get(args.url)
    print(
        json.dumps(
            {
                "url": args.url,
                "wall_median_ms": round(statistics.median(walls), 1),
                "cpu_django_ms": round(own, 1),
                "cpu_postgres_ms": round(db, 1),
                "statements": len(queries),
                "load": pagebench.load_average(),
            }
        ),
        flush=True,
    )
    if args.profile:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
        for _ in range(5):
            client.get(args.url)
        profile.disable()
        pstats.Stats(profile).sort_stats(args.sort).print_stats(args.profile)


if __name__ == "__main__":
    main()
