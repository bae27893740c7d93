"""Opens, clicks and one-click unsubscribe, end to end through an SES-compatible endpoint.

Each message is taken from what FakeSES received; its links are then fetched
from the running service with a client that has no API key and no cookies.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import trio
from conftest import make_config, running_service
from trackingkit import SERVER_HOST, Delivered, Harness, tracking_service

from mailpipe.content.tokens import Tokens
from mailpipe.errors import ConfigError
from mailpipe.http.api import topic_stats_json
from mailpipe.service import run_service
from mailpipe.store import NewMessage, open_store
from mailpipe.timeutil import utcnow

ANN, BOB = "ann@example.com", "bob@example.com"
LINK = "https://shop.example.com/sale?item=7&ref=mail%2Fspring#top"
CONTENT = (
    f'<html><body><p>Hello</p><a href="{LINK.replace("&", "&amp;")}">Sale</a>'
    '<a href="mailto:help@example.com">Help</a></body></html>'
)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def with_query(link: str, /, **changes: str | None) -> str:
    """``link`` with query parameters replaced (``None`` drops one)."""
    parts = urlsplit(link)
    query = dict(parse_qsl(parts.query))
    for name, value in changes.items():
        if value is None:
            query.pop(name, None)
        else:
            query[name] = value
    return parts._replace(query=urlencode(query)).geturl()


def altered(token: str) -> str:
    """The token with its first character changed."""
    return ("B" if token[0] == "A" else "A") + token[1:]


def token_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["t"]


def click_url(mail: Delivered) -> str:
    """The one tracked link of ``mail``."""
    (url,) = [u for u in mail.hrefs if "/v1/events/click?" in u]
    return url


async def send_pair(h: Harness, topic: str, **message: object) -> dict[str, Delivered]:
    mail = await h.send(topic, **{"emails": [ANN, BOB], "content": CONTENT, **message})
    assert sorted(mail) == [ANN, BOB]
    return mail


def assert_no_cookie_no_redirect(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert "set-cookie" not in headers
    assert "location" not in headers


async def test_pixel_fetched_twice_counts_one_open_and_an_altered_token_counts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with tracking_service(tmp_path, monkeypatch) as h:
            mail = await send_pair(h, "opens")
            pixel = mail[ANN].pixel_url
            assert pixel.startswith(f"{SERVER_HOST}/v1/events/open?requestId=")
            for _ in range(2):
                response = await h.public.get(h.local(pixel), headers={"User-Agent": "MailApp/1"})
                assert response.status_code == 200
                assert response.headers["content-type"] == "image/gif"
                assert response.content.startswith(b"GIF89a")
                assert "no-store" in response.headers["cache-control"]
                assert_no_cookie_no_redirect(response)
            other = mail[BOB].pixel_url
            forged = with_query(other, t=altered(token_of(other)))
            response = await h.public.get(h.local(forged))
            assert (response.status_code, response.headers["content-type"]) == (200, "image/gif")
            assert await h.statuses("opens") == {"Open": 1}
            rows = h.query(
                "SELECT request_id, recipient, raw FROM email_results WHERE status = 'Open'"
            )
    assert len(rows) == 2  # both fetches are recorded; the topic counts the request once
    assert {(rid, rcpt) for rid, rcpt, _ in rows} == {(rows[0][0], ANN)}
    raw = json.loads(rows[0][2])
    assert raw["userAgent"] == "MailApp/1"
    assert raw["time"].endswith("Z")


async def test_click_redirects_to_exactly_the_original_and_forgeries_go_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with tracking_service(tmp_path, monkeypatch) as h:
            mail = await send_pair(h, "clicks")
            assert "mailto:help@example.com" in mail[ANN].hrefs  # only web links are tracked
            assert LINK not in mail[ANN].html.replace("&amp;", "&")
            tracked = click_url(mail[ANN])
            response = await h.public.get(h.local(tracked))
            assert response.status_code == 302
            assert response.headers["location"] == LINK
            assert "set-cookie" not in response.headers

            evil = "https://evil.example.net/phish"
            token = token_of(tracked)
            for attempt in (
                with_query(tracked, t=altered(token)),  # changed token
                with_query(tracked, url=evil),  # changed target, genuine token
                with_query(tracked, url=LINK + "x"),  # target extended
                with_query(tracked, t=None),  # missing token
                with_query(tracked, t=""),
                with_query(tracked, url=None),
                with_query(tracked, requestId=None),
                with_query(click_url(mail[BOB]), t=token),  # another request's token
            ):
                response = await h.public.get(h.local(attempt))
                assert 400 <= response.status_code < 500, attempt
                assert_no_cookie_no_redirect(response)
                assert evil not in response.text
            assert await h.statuses("clicks") == {"Click": 1}
            (raw,) = h.query("SELECT raw FROM email_results WHERE status = 'Click'")
    assert json.loads(raw[0])["url"] == LINK


async def test_one_click_post_unsubscribes_a_get_does_not_and_the_next_send_skips_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with tracking_service(tmp_path, monkeypatch) as h:
            mail = await send_pair(h, "first")
            for m in mail.values():
                assert m.headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
                assert m.unsubscribe_url.startswith(f"{SERVER_HOST}/v1/unsubscribe?")
            ann_url, bob_url = mail[ANN].unsubscribe_url, mail[BOB].unsubscribe_url
            assert ann_url != bob_url

            page = await h.public.get(h.local(ann_url))
            assert page.status_code == 200
            assert page.headers["content-type"].startswith("text/html")
            assert re.search(r'<form method="post"', page.text)
            assert_no_cookie_no_redirect(page)
            assert await h.suppressed(ANN) is None

            response = await h.public.post(h.local(bob_url), data=ONE_CLICK)
            assert response.status_code == 200
            assert_no_cookie_no_redirect(response)
            suppression = await h.suppressed(BOB)
            assert suppression is not None
            assert (suppression["reason"], suppression["source"]) == ("unsubscribe", "one-click")
            assert await h.suppressed(ANN) is None
            assert await h.statuses("first") == {"Unsubscribe": 1}

            before = len(h.delivered())
            again = await h.send("second", emails=[ANN, BOB], content=CONTENT)
            assert sorted(again) == [ANN]
            assert len(h.delivered()) == before + 1
            stopped = h.query(
                "SELECT \"to\", status, error FROM email_requests WHERE topic_id = 'second'"
                " AND status = 4"
            )
    assert stopped == [(BOB, 4, "suppressed: unsubscribe")]


async def test_the_confirm_page_posts_the_one_click_form_to_the_same_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with tracking_service(tmp_path, monkeypatch) as h:
            mail = await send_pair(h, "page")
            url = h.local(mail[ANN].unsubscribe_url)
            page = (await h.public.get(url)).text
            (action,) = re.findall(r'<form method="post" action="([^"]+)"', page)
            fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]+)"', page))
            assert fields["List-Unsubscribe"] == "One-Click"
            target = urlsplit(url)._replace(query=action.replace("&amp;", "&")[1:]).geturl()
            assert target == url
            response = await h.public.post(target, data=fields)
            assert response.status_code == 200
            assert "unsubscribed" in response.text
            suppression = await h.suppressed(ANN)
            assert suppression is not None
            assert suppression["source"] == "unsubscribe page"
            # Posting again changes nothing and still answers 200.
            assert (await h.public.post(target, data=ONE_CLICK)).status_code == 200


async def test_forged_and_tampered_tokens_of_every_link_kind_change_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with tracking_service(tmp_path, monkeypatch) as h:
            mail = await send_pair(h, "forge")
            rid = int(mail[ANN].headers["x-request-id"])
            other_id = int(mail[BOB].headers["x-request-id"])
            stranger = Tokens(b"not the service's secret, 32 bytes")
            pixel, click, unsub = (
                mail[ANN].pixel_url,
                click_url(mail[ANN]),
                mail[ANN].unsubscribe_url,
            )
            forged_pixels = [
                stranger.open_url(SERVER_HOST, rid),
                with_query(pixel, requestId=str(other_id)),  # token of another request
                with_query(pixel, t=token_of(click)),  # a click token on the pixel
                with_query(pixel, t=token_of(unsub)),
                with_query(pixel, t=None),
                with_query(pixel, requestId="0" + str(rid)),  # non-canonical id
            ]
            for url in forged_pixels:
                response = await h.public.get(h.local(url))
                assert (response.status_code, response.headers["content-type"]) == (
                    200,
                    "image/gif",
                )
            forged_clicks = [
                stranger.click_url(SERVER_HOST, rid, LINK),
                with_query(click, t=token_of(pixel)),
                with_query(click, requestId=str(other_id)),
            ]
            for url in forged_clicks:
                response = await h.public.get(h.local(url))
                assert response.status_code == 400
                assert_no_cookie_no_redirect(response)
            forged_unsubscribes = [
                stranger.unsubscribe_url(SERVER_HOST, rid, ANN),
                Tokens(b"another secret entirely, 32 byte").unsubscribe_url(SERVER_HOST, rid, ANN),
                with_query(unsub, t=token_of(pixel)),
                with_query(unsub, requestId=str(other_id)),  # Ann's token, Bob's request
                with_query(unsub, t=altered(token_of(unsub))),
                with_query(unsub, t=None),
                with_query(unsub, requestId="999999"),
            ]
            for url in forged_unsubscribes:
                for method in ("GET", "POST"):
                    response = await h.public.request(method, h.local(url), data=ONE_CLICK)
                    assert response.status_code == 400, (method, url)
                    assert_no_cookie_no_redirect(response)
            assert await h.statuses("forge") == {}
            assert h.query("SELECT COUNT(*) FROM suppressions") == [(0,)]


async def test_only_a_post_with_the_one_click_form_unsubscribes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with tracking_service(tmp_path, monkeypatch) as h:
            mail = await send_pair(h, "body")
            url = h.local(mail[ANN].unsubscribe_url)
            for data in ({}, {"List-Unsubscribe": "Yes"}):
                response = await h.public.post(url, data=data)
                assert response.status_code == 400
            response = await h.public.post(
                url,
                content=b"x" * 10_000,
                headers={"content-type": "application/x-www-form-urlencoded"},
            )
            assert response.status_code == 413
            assert await h.suppressed(ANN) is None
            # RFC 8058 allows the form as multipart/form-data too.
            multipart = {"List-Unsubscribe": (None, "One-Click")}
            response = await h.public.post(url, files=multipart)
            assert response.status_code == 200
            assert_no_cookie_no_redirect(response)
            assert await h.suppressed(ANN) is not None


async def test_a_scanner_fetching_every_link_unsubscribes_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = CONTENT.replace(
        "</body>", '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body>'
    )
    with trio.fail_after(30):
        async with tracking_service(tmp_path, monkeypatch) as h:
            mail = await send_pair(h, "scan", content=content)
            for m in mail.values():
                in_body = [u for u in m.hrefs if "/v1/unsubscribe?" in u]
                assert in_body == [m.unsubscribe_url]  # the body's link is not click-tracked
                links = [m.pixel_url, m.unsubscribe_url, *m.hrefs]
                for url in links:
                    if url.startswith(SERVER_HOST):
                        for method in ("HEAD", "GET"):
                            response = await h.public.request(method, h.local(url))
                            assert response.status_code in (200, 302)
            assert h.query("SELECT COUNT(*) FROM suppressions") == [(0,)]
            assert await h.statuses("scan") == {"Open": 2, "Click": 2}
            again = await h.send("scan-again", emails=[ANN, BOB])
            assert sorted(again) == [ANN, BOB]


async def test_tracking_can_be_switched_off_per_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        async with tracking_service(tmp_path, monkeypatch) as h:
            mail = await h.send(
                "quiet", emails=[ANN], content=CONTENT, trackOpens=False, trackClicks=False
            )
            clicks_only = await h.send(
                "clicks-only", emails=[BOB], content=CONTENT, trackOpens=False
            )
    assert mail[ANN].html == CONTENT
    assert mail[ANN].headers["list-unsubscribe"].startswith(f"<{SERVER_HOST}/v1/unsubscribe?")
    assert "<img" not in clicks_only[BOB].html
    assert "/v1/events/click?" in click_url(clicks_only[BOB])


@pytest.mark.parametrize("path", ["/v1/events/open", "/v1/events/click", "/v1/unsubscribe"])
async def test_links_need_no_api_key_and_bare_paths_are_harmless(tmp_path: Path, path: str) -> None:
    with trio.fail_after(20):
        async with tracking_service(tmp_path) as h:
            response = await h.public.get(path)
            assert response.status_code == (200 if path.endswith("open") else 400)
            assert_no_cookie_no_redirect(response)


async def test_the_generated_tracking_secret_is_private_and_outlives_a_restart(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path)
    with trio.fail_after(20):
        async with running_service(config) as svc:
            url = svc.tokens.open_url(SERVER_HOST, 42)
        async with running_service(config) as svc:
            query = dict(parse_qsl(urlsplit(url).query))
            assert svc.tokens.check_open(query["requestId"], query["t"]) == 42
    secret = tmp_path / "data" / "tracking_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert len(secret.read_text().strip()) == 64


async def test_a_configured_tracking_secret_is_used_as_given(tmp_path: Path) -> None:
    key = "k" * 32
    with trio.fail_after(20):
        async with running_service(make_config(tmp_path, TRACKING_SECRET=key)) as svc:
            url = svc.tokens.unsubscribe_url(SERVER_HOST, 1, ANN)
    assert url == Tokens(key.encode()).unsubscribe_url(SERVER_HOST, 1, ANN)
    assert not (tmp_path / "data" / "tracking_secret").exists()
    with trio.fail_after(20), pytest.raises(ConfigError, match="TRACKING_SECRET"):
        await run_service(make_config(tmp_path, TRACKING_SECRET="short"), handle_signals=False)


async def test_results_for_unknown_requests_are_not_stored(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with open_store(tmp_path / "app.db") as store:
            await store.insert_messages([NewMessage("t", "s", "c", [ANN])], utcnow())
            assert not await store.record_result(999, "Open", "{}", utcnow())
            assert not await store.unsubscribe(999, "one-click", "{}", utcnow())
            assert await store.recipient_of(999) is None
            assert await store.recipient_of(1) == ANN
            assert await store.unsubscribe(1, "one-click", "{}", utcnow())
            assert not await store.unsubscribe(1, "one-click", "{}", utcnow())  # already
            suppression = await store.get_suppression(ANN.upper())
            assert suppression is not None
            assert (suppression.reason, suppression.request_id) == ("unsubscribe", 1)
            stats = topic_stats_json(await store.topic_stats("t"))
    assert stats["result"] == {"statuses": {"Unsubscribe": 1}}


async def test_links_use_the_bound_port_when_server_port_is_0(tmp_path: Path) -> None:
    from feedbackkit import feedback_service

    with trio.fail_after(20):
        async with feedback_service(tmp_path) as h:
            assert h.svc.config.server_port == 0 and "SERVER_HOST" not in os.environ
            await h.send("links", ["ann@example.com"])
            (eml,) = h.outbox()
            port = h.svc.url.rsplit(":", 1)[1]
            text = eml.read_text()
            assert f"http://localhost:{port}/v1/unsubscribe" in text
            assert "localhost:0" not in text
