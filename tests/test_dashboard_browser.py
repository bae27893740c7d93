"""The dashboard in a real headless Chromium, against ``python -m mailpipe`` sending
through the fake SES endpoint. Screenshots go to the test's temporary folder."""

from __future__ import annotations

from pathlib import Path

from browserkit import browser_page, chromium_or_skip, log_in
from conftest import API_KEY
from fake_ses import FakeSES
from procs import ServiceProcess


def figure(page: object, name: str) -> int:
    """The number on the topic page's ``name`` card."""
    text = page.inner_text(f'[data-figure="{name}"] b')  # type: ignore[attr-defined]
    return int(text.replace(",", ""))


def test_log_in_watch_a_send_stop_a_topic_remove_a_suppression(
    tmp_path: Path, fake: FakeSES
) -> None:
    chromium_or_skip()
    env = {"EMAIL_TRANSPORT": "ses", "AWS_ENDPOINT_URL_SESV2": fake.url, "EMAIL_RATE": 40,
           "DASHBOARD_REFRESH_S": 1}  # fmt: skip
    svc = ServiceProcess(tmp_path, env)
    try:
        assert svc.post("live", [f"l{i}@example.com" for i in range(400)]).status_code == 200
        later = {"scheduledAt": "2099-01-01T00:00:00Z"}
        assert (
            svc.post("halt", [f"h{i}@example.com" for i in range(50)], **later).status_code == 200
        )
        added = svc.client.post("/v1/suppressions", json={"emails": ["gone@example.com"]})
        assert added.status_code == 200 and added.json() == {"added": 1}
        with browser_page() as page:
            log_in(page, svc.url, API_KEY)
            page.screenshot(path=tmp_path / "topics.png")
            page.goto(f"{svc.url}/dashboard/topics/live")
            first = figure(page, "sent")
            # The page reloads itself while the topic sends: the count grows on screen.
            page.wait_for_function(
                "n => Number(document.querySelector('[data-figure=sent] b')"
                ".textContent.replace(/,/g, '')) > n", arg=first,
            )  # fmt: skip
            assert figure(page, "sent") > first
            assert figure(page, "sent") <= len(fake.received)
            page.screenshot(path=tmp_path / "topic-live.png", full_page=True)

            page.goto(f"{svc.url}/dashboard/topics/halt")
            assert figure(page, "pending") == 50
            page.click("#actions button.danger")
            page.wait_for_selector("text=50 requests stopped")
            assert figure(page, "stopped") == 50
            assert svc.stats("halt")["stopped"] == 50
            page.screenshot(path=tmp_path / "topic-stopped.png")

            page.goto(f"{svc.url}/dashboard/suppressions")
            page.click('tr[data-email="gone@example.com"] button')
            page.wait_for_selector("text=gone@example.com removed")
            assert svc.client.get("/v1/suppressions/gone@example.com").status_code == 404
            page.screenshot(path=tmp_path / "suppressions.png")

            page.goto(f"{svc.url}/dashboard/account")
            page.screenshot(path=tmp_path / "account.png")
            page.click("text=Log out")
            page.goto(f"{svc.url}/dashboard/topics/live")
            assert page.url.endswith("/dashboard/login")
        for name in ("topics", "topic-live", "topic-stopped", "suppressions", "account"):
            assert (tmp_path / f"{name}.png").stat().st_size > 1000
    finally:
        assert svc.stop() == 0
