"""The dashboard over real HTTP: sessions, CSRF on every form, pages on both stores.

Routes are enumerated from the app's URL map, so a new dashboard route is
checked without being listed here.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import trio
from conftest import API_KEY, make_config, running_service

from mailpipe.http.app import create_app
from mailpipe.http.dashboard import PUBLIC
from mailpipe.model import Figures, Pause
from mailpipe.service import Service
from mailpipe.status import Status
from mailpipe.timeutil import utcnow

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def dashboard_rules(svc: Service) -> list[tuple[str, str, str]]:
    """(method, path with sample arguments, endpoint) of every dashboard route."""
    rules = []
    for rule in create_app(svc).url_map.iter_rules():
        if not rule.rule.startswith("/dashboard"):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", "sample", rule.rule)
        rules.extend((m, path, rule.endpoint) for m in sorted(rule.methods - {"HEAD", "OPTIONS"}))
    return rules


async def logged_in(client: httpx.AsyncClient) -> str:
    """Log ``client`` in; the session's CSRF token."""
    page = await client.get("/dashboard/login")
    token = CSRF.search(page.text)
    assert token is not None
    answer = await client.post(
        "/dashboard/login", data={"csrf_token": token.group(1), "api_key": API_KEY}
    )
    assert answer.status_code == 302 and answer.headers["location"] == "/dashboard/"
    found = CSRF.search((await client.get("/dashboard/")).text)
    assert found is not None
    return found.group(1)


async def test_every_route_needs_a_session_and_every_form_its_token(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with running_service(make_config(tmp_path)) as svc:
            rules = dashboard_rules(svc)
            endpoints = {endpoint for _, _, endpoint in rules}
            assert {"dashboard.topics", "dashboard.topic", "dashboard.stop",
                    "dashboard.suppressions", "dashboard.remove_suppression",
                    "dashboard.account", "dashboard.logout", "dashboard.pause",
                    "dashboard.resume", "dashboard.resume_account"} <= endpoints  # fmt: skip
            async with httpx.AsyncClient(base_url=svc.url) as anonymous:
                for method, path, endpoint in rules:
                    if endpoint in PUBLIC:
                        continue
                    answer = await anonymous.request(method, path, data={"csrf_token": "x"})
                    assert answer.status_code == 302, (method, path)
                    assert answer.headers["location"] == "/dashboard/login", (method, path)
            async with httpx.AsyncClient(base_url=svc.url) as client:
                token = await logged_in(client)
                posts = [(path, endpoint) for method, path, endpoint in rules if method == "POST"]
                assert len(posts) >= 4
                for path, _ in posts:
                    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": token[:-1]}):
                        answer = await client.post(path, data={**data, "email": "a@example.com"})
                        assert answer.status_code == 403, (path, data)
                    assert "Nothing was changed" in answer.text
                # The login form without its token is refused too, even with the key.
                async with httpx.AsyncClient(base_url=svc.url) as fresh:
                    await fresh.get("/dashboard/login")
                    refused = await fresh.post("/dashboard/login", data={"api_key": API_KEY})
                    assert refused.status_code == 403
                    assert "mailpipe_session" not in refused.headers.get("set-cookie", "")
                # And still logged in: the refusals changed nothing.
                assert (await client.get("/dashboard/")).status_code == 200


async def test_cookie_flags_wrong_key_and_logout(tmp_path: Path) -> None:
    https = make_config(tmp_path, SERVER_HOST="https://mail.example.com")
    with trio.fail_after(30):
        async with running_service(https) as svc, httpx.AsyncClient(base_url=svc.url) as client:
            # httpx keeps a Secure cookie from plain http: pass the cookie by hand.
            page = await client.get("/dashboard/login")
            cookie = page.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
            client.cookies.clear()
            jar = {"Cookie": f"mailpipe_session={page.cookies['mailpipe_session']}"}
            token = CSRF.findall(page.text)[0]
            wrong = await client.post(
                "/dashboard/login", headers=jar, data={"csrf_token": token, "api_key": "nope"}
            )
            assert wrong.status_code == 401 and "not this service" in wrong.text
            login = await client.post(
                "/dashboard/login", headers=jar, data={"csrf_token": token, "api_key": API_KEY}
            )
            assert login.status_code == 302
            jar = {"Cookie": f"mailpipe_session={login.cookies['mailpipe_session']}"}
            home = await client.get("/dashboard/", headers=jar)
            assert home.status_code == 200
            new_token = CSRF.findall(home.text)[0]
            assert new_token != token  # a login gets a fresh token
            out = await client.post(
                "/dashboard/logout", headers=jar, data={"csrf_token": new_token}
            )
            assert out.status_code == 302
            jar = {"Cookie": f"mailpipe_session={out.cookies['mailpipe_session']}"}
            assert (await client.get("/dashboard/", headers=jar)).status_code == 302
        async with (
            running_service(make_config(tmp_path)) as svc,
            httpx.AsyncClient(base_url=svc.url) as client,
        ):
            cookie = (await client.get("/dashboard/login")).headers["set-cookie"]
            assert "Secure" not in cookie


async def test_pages_show_the_stores_figures(tmp_path: Path, store_env: dict[str, str]) -> None:
    config = make_config(tmp_path, EMAIL_RATE=2000, **store_env)
    with trio.fail_after(60):
        async with running_service(config) as svc:
            headers = {"x-api-key": API_KEY}
            async with httpx.AsyncClient(base_url=svc.url, headers=headers) as api:
                emails = [f"p{i}@example.com" for i in range(300)]
                body = {"messages": [{"topicId": "pages", "emails": emails, "subject": "s",
                                      "content": "<p>hi</p>"}]}  # fmt: skip
                assert (await api.post("/v1/messages", json=body)).status_code == 200
                later = to_json_later()
                body["messages"][0].update(topicId="later", scheduledAt=later)
                assert (await api.post("/v1/messages", json=body)).status_code == 200
                for address in ("keep@example.com", "lift@example.com"):
                    await svc.store.add_suppression(address, "manual", "test")
                while (await api.get("/v1/topics/pages")).json()["request"]["sent"] < 300:
                    await trio.sleep(0.05)
            async with httpx.AsyncClient(base_url=svc.url) as client:
                token = await logged_in(client)
                listing = (await client.get("/dashboard/")).text
                assert ">pages</a>" in listing and ">later</a>" in listing
                assert 'http-equiv="refresh"' in listing  # "later" is pending
                topic = (await client.get("/dashboard/topics/pages")).text
                assert '<div class="card" data-figure="sent"><b>300</b>' in topic
                assert 'data-kind="sent"' in topic and "<svg" in topic
                assert 'http-equiv="refresh"' not in topic  # nothing pending: no reload
                stop = await client.post("/dashboard/topics/later/stop", data={"csrf_token": token})
                assert stop.status_code == 303
                stats = await svc.store.topic_stats("later")
                assert stats.requests[Status.STOPPED] == 300
                found = (await client.get("/dashboard/suppressions", params={"q": "LIFT"})).text
                assert "lift@example.com" in found and "keep@example.com" not in found
                removed = await client.post(
                    "/dashboard/suppressions/remove",
                    data={"csrf_token": token, "email": "lift@example.com"},
                )
                assert removed.status_code == 303
                assert await svc.store.get_suppression("lift@example.com") is None
                assert await svc.store.get_suppression("keep@example.com") is not None
                account = (await client.get("/dashboard/account")).text
                assert "queued requests" in account and 'data-kind="sent"' in account


async def test_pause_and_resume_a_topic_and_the_account(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    with trio.fail_after(60):
        async with running_service(make_config(tmp_path, **store_env)) as svc:
            headers = {"x-api-key": API_KEY}
            async with httpx.AsyncClient(base_url=svc.url, headers=headers) as api:
                body = {"messages": [{"topicId": "held", "subject": "s", "content": "<p>hi</p>",
                                      "emails": [f"h{i}@example.com" for i in range(20)],
                                      "scheduledAt": to_json_later()}]}  # fmt: skip
                assert (await api.post("/v1/messages", json=body)).status_code == 200
            async with httpx.AsyncClient(base_url=svc.url) as client:
                token = await logged_in(client)
                page = (await client.get("/dashboard/topics/held")).text
                assert "/dashboard/topics/held/pause" in page and "/resume" not in page
                bad = await client.post("/dashboard/topics/held/pause",
                                        data={"csrf_token": token, "reason": "x" * 501})
                assert bad.status_code == 303
                assert bad.headers["location"].endswith("?refused=reason")
                shown = (await client.get(bad.headers["location"])).text
                assert "A reason has 1 to 500 characters" in shown
                forged = await client.get("/dashboard/topics/held?refused=Call+us&stopped=x")
                assert "Call us" not in forged.text and "requests stopped" not in forged.text
                assert await svc.store.topic_pause("held") is None
                paused = await client.post("/dashboard/topics/held/pause",
                                           data={"csrf_token": token, "reason": "wrong list"})
                assert paused.status_code == 303
                pause = await svc.store.topic_pause("held")
                assert pause is not None and (pause.reason, pause.by) == ("wrong list", "user")
                page = (await client.get("/dashboard/topics/held")).text
                assert "Paused by hand" in page and "wrong list" in page
                assert "/dashboard/topics/held/resume" in page
                resumed = await client.post("/dashboard/topics/held/resume",
                                            data={"csrf_token": token})
                assert resumed.status_code == 303 and await svc.store.topic_pause("held") is None
                stats = await svc.store.topic_stats("held")
                assert stats.requests[Status.CREATED] == 20  # pending all along

                account = (await client.get("/dashboard/account")).text
                assert "All sending is paused" not in account and "SES enforcement" in account
                await svc.store.pause_account(
                    Pause("account bounce rate 6.00%", "auto", utcnow(), Figures(1000, 60, 0))
                )
                account = (await client.get("/dashboard/account")).text
                assert "All sending is paused (automatically" in account
                assert "account bounce rate 6.00%" in account
                lifted = await client.post("/dashboard/account/resume", data={"csrf_token": token})
                assert lifted.status_code == 303 and await svc.store.account_pause() is None
                assert "All sending is paused" not in (await client.get("/dashboard/account")).text


def to_json_later() -> str:
    """An RFC 3339 time a day from now."""
    return (utcnow() + timedelta(days=1)).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize("text", ["%", "_", "\\"])
async def test_search_treats_like_wildcards_as_text(tmp_path: Path, text: str) -> None:
    with trio.fail_after(30):
        async with running_service(make_config(tmp_path)) as svc:
            await svc.store.add_suppression("plain@example.com", "manual", "test")
            assert await svc.store.search_suppressions(text, 10) == []
            assert len(await svc.store.search_suppressions("PLAIN", 10)) == 1
