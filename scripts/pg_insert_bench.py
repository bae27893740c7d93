"""PostgreSQL insert benchmark: recipients per second of one ``insert_messages``.

Makes a scratch database on the server of ``--admin-url`` (default: the local
socket), opens a :class:`~mailpipe.store.postgres.PostgresStore` on it, and
times ``--runs`` inserts of ``--recipients`` distinct addresses in one message,
from the call to the commit. Prints each run and the median, then drops the
database::

    python scripts/pg_insert_bench.py                     # 100,000 recipients, 5 runs
    python scripts/pg_insert_bench.py --recipients 20000 --runs 3
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import time
from urllib.parse import urlsplit, urlunsplit

import psycopg
import trio

from mailpipe.store import NewMessage, open_store
from mailpipe.timeutil import utcnow

ADMIN_URL = "postgresql://postgres@/postgres?host=/var/run/postgresql"


async def bench(url: str, recipients: int, runs: int) -> list[float]:
    """Seconds per insert of ``recipients`` addresses, ``runs`` times."""
    emails = [f"user{i}@mail{i % 19}.example.com" for i in range(recipients)]
    took = []
    async with open_store(url, lease_s=10.0) as store:
        for run in range(runs):
            msg = NewMessage(f"bench-{run}", "Hello", "<p>Hi {{name}}</p>", emails)
            start = time.perf_counter()
            await store.insert_messages([msg], utcnow())
            took.append(time.perf_counter() - start)
            print(f"run {run + 1}: {took[-1]:.3f} s, {recipients / took[-1]:,.0f} recipients/s")
    return took


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark on a scratch database and print the median."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admin-url", default=ADMIN_URL)
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    name = f"mailpipe_bench_{secrets.token_hex(3)}"
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"'.encode())
    try:
        url = urlunsplit(urlsplit(args.admin_url)._replace(path="/" + name))
        took = trio.run(bench, url, args.recipients, args.runs)
        median = statistics.median(took)
        print(f"median: {median:.3f} s, {args.recipients / median:,.0f} recipients/s")
    finally:
        with psycopg.connect(args.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())


if __name__ == "__main__":
    main()
