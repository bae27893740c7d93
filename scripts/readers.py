"""Simulated readers for a demo: open and click some of the mail a fake SES received.

Polls ``GET /_fake/received`` of ``scripts/fake_ses.py`` for new messages and, for a
seeded random share of them, fetches the message's open pixel and its first
tracked link from the mailpipe service (its tracking endpoints record real Open
and Click results). The link's host is replaced by ``--service`` (the service may
have been started with ``SERVER_PORT=0``). Stops after ``--idle`` seconds
without a new message. Loopback only: it calls the two URLs it is given.

    python scripts/readers.py --fake http://127.0.0.1:PORT --service http://127.0.0.1:PORT
"""

from __future__ import annotations

import argparse
import random
import re
import time
from urllib.parse import urlsplit, urlunsplit

import httpx

PIXEL = re.compile(r'<img[^>]+src="([^"]*/v1/events/open[^"]*)"')
LINK = re.compile(r'href="([^"]*/v1/events/click[^"]*)"')


def rebase(url: str, service: str) -> str:
    """``url`` with the scheme and host of ``service``."""
    parts, base = urlsplit(url.replace("&amp;", "&")), urlsplit(service)
    return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))


def main() -> None:
    """Poll, open and click until idle; print what was done."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--fake", required=True)
    p.add_argument("--service", required=True)
    p.add_argument("--open-rate", type=float, default=0.3)
    p.add_argument("--click-rate", type=float, default=0.25, help="of the opened")
    p.add_argument("--idle", type=float, default=20.0)
    p.add_argument("--every", type=float, default=5.0)
    p.add_argument("--max-per-poll", type=int, default=2000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    offset, opened, clicked, last_new = 0, 0, 0, time.monotonic()
    with httpx.Client(timeout=30) as fake, httpx.Client(timeout=30) as service:
        while time.monotonic() - last_new < args.idle:
            count = int(fake.get(f"{args.fake}/_fake/stats").json().get("received", 0))
            start = max(offset, count - args.max_per_poll)  # a sample of the newest
            if count > offset:
                last_new = time.monotonic()
                batch = fake.get(f"{args.fake}/_fake/received", params={"offset": start}).json()
                for message in batch[: count - start]:
                    if rng.random() >= args.open_rate:
                        continue
                    pixel = PIXEL.search(message["html"])
                    if pixel:
                        service.get(rebase(pixel.group(1), args.service))
                        opened += 1
                    link = LINK.search(message["html"])
                    if link and rng.random() < args.click_rate:
                        service.get(rebase(link.group(1), args.service), follow_redirects=False)
                        clicked += 1
                offset = count
                print(f"received {count:,}: opened {opened:,}, clicked {clicked:,}", flush=True)
            time.sleep(args.every)


if __name__ == "__main__":
    main()
