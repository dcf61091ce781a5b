"""
The dashboard in a real headless browser (Debian's chromium, driven by playwright): it loads,
asks for the token, charts usage after traffic, shows a live realtime session's tokens rising,
and creates and revokes a key.  Screenshots are kept under tests/artifacts/.

Also the live sessions stream and the providers view, through plain HTTP.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent
from twisted.web.http_headers import Headers

from tests.realtime_harness import RealtimeTestCase, until

ADMIN = "admin-secret"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = os.path.join(os.path.dirname(__file__), "artifacts")
CHAT = b'{"model":"demo","messages":[{"role":"user","content":"how are the tides today?"}]}'


def text_turn(client: Any, words: str) -> Deferred[dict[str, Any]]:
    client.send_event(type="conversation.item.create", item={
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": words}]})
    client.send_event(type="response.create", response={"output_modalities": ["text"]})
    return client.next("response.done")


class Browser:
    """One page in chromium, used from one thread only (playwright's rule)."""

    def __init__(self, base_url: str) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM,
                                                         args=CHROMIUM_ARGS)
        self.page = self._browser.new_page(viewport={"width": 1280, "height": 800})
        self.page.set_default_timeout(10000)
        #: What the page's prompts are answered, in turn (a confirm is accepted).
        self.answers: list[str] = []
        self.page.on("dialog", lambda dialog: dialog.accept(
            self.answers.pop(0) if dialog.type == "prompt" else None))
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        #: Every URL asked for, and those that were fetched (the page's policy stops others).
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.fetched: list[str] = []
        self.page.on("requestfinished", lambda request: self.fetched.append(request.url))
        self._base_url = base_url

    def shot(self, name: str, full_page: bool = True) -> str:
        os.makedirs(ARTIFACTS, exist_ok=True)
        path = os.path.join(ARTIFACTS, name)
        self.page.screenshot(path=path, full_page=full_page)
        return path

    def close(self) -> None:
        self._browser.close()
        self._playwright.stop()


class DashboardTests(RealtimeTestCase):
    timeout = 60

    def setUp(self) -> Any:
        if not os.path.exists(CHROMIUM):
            raise SkipTest("Debian's chromium is not installed (.ci/run installs it)")
        # Playwright's objects belong to the thread that made them: one thread for them all.
        self.browser_thread = ThreadPool(minthreads=1, maxthreads=1, name="browser")
        self.browser_thread.start()
        self.addCleanup(self.browser_thread.stop)
        return super().setUp()

    def in_browser(self, function: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, self.browser_thread, function, *args)

    async def test_dashboard_in_a_browser(self) -> None:
        for _ in range(3):
            response = await treq.post(self.base_url + "/v1/chat/completions", CHAT,
                                       pool=self.pool)
            self.assertEqual(response.code, 200)
            await response.content()
        ledger = self.service.gateway.ledger
        await until(lambda: not ledger.pending)

        browser = await self.in_browser(Browser, self.base_url)
        self.addCleanup(lambda: self.in_browser(browser.close))
        page = browser.page

        def log_in() -> int:
            page.goto(self.base_url + "/admin/ui")
            page.fill("#token", "not the token")
            page.click("#login button")
            page.wait_for_selector("#login-error:has-text('not the admin token')")
            page.fill("#token", ADMIN)
            page.click("#login button")
            page.wait_for_selector("#chart canvas")
            page.wait_for_selector("#usage-table tbody tr")
            browser.shot("dashboard-usage.png")
            return int(page.get_attribute("#chart", "data-series") or 0)

        self.assertEqual(await self.in_browser(log_in), 1)  # one model: demo
        [row] = await self.in_browser(lambda: page.inner_text("#usage-table tbody").split("\n"))
        self.assertTrue(row.startswith("demo\t3\t0"), row)

        client = await self.connect("model=demo")
        await client.next("session.created")
        await text_turn(client, "hello there, how are you")

        def tokens_in(at_least: int) -> int:
            page.click("#tabs button[data-tab=sessions]")
            cell = "#active-sessions tbody tr td.text-in"
            page.wait_for_function(
                f"(n) => Number((document.querySelector('{cell}') || {{}}).textContent"
                f"?.replace(/,/g, '')) >= n", arg=at_least)
            return int(page.inner_text(cell).replace(",", ""))

        first = await self.in_browser(tokens_in, 1)
        await text_turn(client, "and what about tomorrow, will it rain")
        second = await self.in_browser(tokens_in, first + 1)
        self.assertGreater(second, first)
        await self.in_browser(browser.shot, "dashboard-sessions.png")
        [session] = self.service.gateway.realtime.active()
        self.assertEqual(second, session.tally.usage.input_text_tokens)

        def create_and_revoke() -> tuple[str, str]:
            page.click("#tabs button[data-tab=keys]")
            page.fill("#new-key input[name=name]", "browser-made")
            page.fill("#new-key input[name=requests_per_minute]", "30")
            page.click("#new-key button[type=submit]")
            secret = page.wait_for_selector("#new-secret:has-text('sk-')").inner_text()
            row = page.wait_for_selector("#keys-table tr:has-text('browser-made')")
            key_id = row.get_attribute("data-key")
            browser.shot("dashboard-keys.png")
            browser.answers[:] = ["60", "", "12.5"]  # requests, tokens per minute, budget
            row.query_selector("button.limits").click()
            page.wait_for_selector(f"#keys-table tr[data-key='{key_id}']:has-text('12.5')")
            row = page.wait_for_selector(f"#keys-table tr[data-key='{key_id}']")
            row.query_selector("button.revoke").click()
            page.wait_for_selector(f"#keys-table tr[data-key='{key_id}']:has-text('revoked')")
            page.click("#tabs button[data-tab=providers]")
            page.wait_for_selector("#models-table tbody tr:has-text('demo')")
            return key_id, secret

        key_id, secret = await self.in_browser(create_and_revoke)
        response = await treq.get(self.base_url + f"/admin/keys/{key_id}", pool=self.pool,
                                  headers={"authorization": f"Bearer {ADMIN}"})
        record = await response.json()
        self.assertEqual((record["requests_per_minute"], record["tokens_per_minute"],
                          record["budget_usd"]), (60, 0, 12.5))
        self.assertIsNotNone(record["revoked_at"])
        self.assertNotIn(secret.split(":")[1].split()[0], orjson.dumps(record).decode())

        self.assertEqual(await self.in_browser(lambda: browser.errors), [])
        # The token never went into a URL, and nothing came from elsewhere.
        for url in await self.in_browser(lambda: browser.requests):
            self.assertTrue(url.startswith(self.base_url), url)
            self.assertNotIn(ADMIN, url)
        client.sendClose(1000)
        await self.clients[0][1].closed


    async def test_the_api_docs_render(self) -> None:
        browser = await self.in_browser(Browser, self.base_url)
        self.addCleanup(lambda: self.in_browser(browser.close))

        def read_docs() -> str:
            browser.page.goto(self.base_url + "/docs")
            return browser.page.wait_for_selector(
                "h2:has-text('Create a chat completion')").inner_text()

        self.assertEqual(await self.in_browser(read_docs), "Create a chat completion")
        await self.in_browser(browser.shot, "docs.png", False)  # the page is long
        self.assertEqual(await self.in_browser(lambda: browser.errors), [])
        elsewhere = [url for url in await self.in_browser(lambda: browser.fetched)
                     if not url.startswith((self.base_url, "blob:" + self.base_url))]
        self.assertEqual(elsewhere, [])


class _Events(Protocol):
    """Collects an event stream's bytes until told to hang up."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class LiveViewTests(RealtimeTestCase):
    async def test_the_sessions_stream_sends_a_snapshot_a_second(self) -> None:
        client = await self.connect("model=demo")
        await client.next("session.created")
        await text_turn(client, "hello")
        agent = Agent(reactor, pool=self.pool)
        refused = await agent.request(b"GET", (self.base_url + "/admin/realtime/stream").encode())
        self.assertEqual(refused.code, 401)
        await treq.content(refused)
        response = await agent.request(
            b"GET", (self.base_url + "/admin/realtime/stream").encode(),
            Headers({b"authorization": [f"Bearer {ADMIN}".encode()]}))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/event-stream"])
        events = _Events()
        response.deliverBody(events)
        await until(lambda: events.received.count(b"\n\n") >= 1)
        started = reactor.seconds()
        await until(lambda: events.received.count(b"\n\n") >= 2, timeout=3)
        self.assertGreaterEqual(reactor.seconds() - started, 0.5)  # no faster than the interval
        first = events.received.split(b"\n\n")[0]
        self.assertTrue(first.startswith(b"event: sessions\ndata: "))
        snapshot = orjson.loads(first.partition(b"data: ")[2])
        [live] = snapshot["active"]
        self.assertEqual(live["model"], "demo")
        self.assertGreater(live["usage"]["input_text_tokens"], 0)
        events.transport.stopProducing()
        await deferLater(reactor, 0.05, lambda: None)
        # The client left: the feed stopped (no timer left behind for it).
        self.assertFalse([call for call in reactor.getDelayedCalls()
                          if "_SessionFeed" in repr(call.func)])
        client.sendClose(1000)
        await self.clients[0][1].closed

    async def test_providers_and_their_routes(self) -> None:
        status, view = await self.admin("/admin/providers")
        self.assertEqual(status, 200)
        self.assertIn({"name": "demo", "kind": "demo"}, view["providers"])
        voice = next(model for model in view["models"] if model["name"] == "voice")
        self.assertEqual(voice["targets"], [{"provider": "fake", "model": "gpt-realtime",
                                             "weight": 1.0, "priority": 0,
                                             "cooling_down": False}])
        status, _ = await self.admin("/admin/providers", token="wrong")
        self.assertEqual(status, 401)

    async def test_the_page_is_served_without_the_token_and_the_rest_is_not(self) -> None:
        response = await treq.get(self.base_url + "/admin/ui/", pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertIn(b"default-src 'self'",
                      response.headers.getRawHeaders(b"content-security-policy")[0])
        self.assertIn(b'id="login"', await response.content())
        moved = await treq.get(self.base_url + "/admin/ui", pool=self.pool,
                               allow_redirects=False)
        self.assertEqual((moved.code, moved.headers.getRawHeaders(b"location")),
                         (301, [b"/admin/ui/"]))
        await moved.content()
        script = await treq.get(self.base_url + "/admin/ui/uPlot.iife.min.js", pool=self.pool)
        self.assertEqual(script.code, 200)
        self.assertIn(b"uPlot", await script.content())
        docs = await treq.get(self.base_url + "/docs/", pool=self.pool)
        self.assertIn(b'spec-url="/openapi.json"', await docs.content())
        missing = await treq.get(self.base_url + "/admin/ui/nothing.js", pool=self.pool)
        self.assertEqual(missing.code, 404)
        await missing.content()
