"""The web console in a real browser: headless Chromium (Debian's package)
driven by Playwright, against real sidecar processes on free ports, with
a real redis-server where Redis matters. Screenshots of the main pages are
saved to target/console-screenshots/ (CONSOLE_SCREENSHOTS overrides)."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("OUTRIGGER_BIN", str(ROOT / "target/debug/outrigger"))
SHOTS = pathlib.Path(os.environ.get("CONSOLE_SCREENSHOTS", ROOT / "target/console-screenshots"))
TOKEN = "console-test-token"
WAIT_MS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {limit} s")


class Redis:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(7) == b"+PONG\r\n"
            except OSError:
                return False

        wait_until("redis-server answers", up)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


class Sidecar:
    """An outrigger process: the API on one free port, the ops listener
    (where the console is) on another, both on loopback."""

    def __init__(self, env: dict[str, str], ops_host: str = "127.0.0.1") -> None:
        self.http, self.ops = free_port(), free_port()
        full = {
            "PATH": os.environ["PATH"],
            "OUTRIGGER_HTTP__ADDR": f"127.0.0.1:{self.http}",
            "OUTRIGGER_GRPC__ADDR": f"127.0.0.1:{free_port()}",
            "OUTRIGGER_OPS__ADDR": f"{ops_host}:{self.ops}",
            **env,
        }
        self.log = tempfile.NamedTemporaryFile(prefix="outrigger-", suffix=".log", delete=False)
        self.process = subprocess.Popen([BIN, "serve"], env=full, stdout=self.log, stderr=self.log)
        self.token = env.get("OUTRIGGER_AUTH__TOKEN")

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ops}/readyz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until("the sidecar is ready", ready)
        self.console = f"http://127.0.0.1:{self.ops}/console/"

    def api(self, method: str, path: str, body: bytes | dict | None = None) -> tuple[int, bytes]:
        """A call to the sidecar's own API (not through the console)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=data, method=method)
        if isinstance(body, dict):
            req.add_header("content-type", "application/json")
        if self.token:
            req.add_header("authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run scripts/install-test-deps.sh"
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == [], f"the page threw: {errors}"


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_the_overview_shows_a_redis_outage_within_seconds(page: Page) -> None:
    redis = Redis()
    s = Sidecar(
        {
            "OUTRIGGER_REDIS__URL": f"redis://127.0.0.1:{redis.port}",
            "OUTRIGGER_FAILOVER__PROBE_MAX": "1s",
            "OUTRIGGER_AUTH__TOKEN": TOKEN,
        }
    )
    try:
        page.goto(s.console)
        page.fill("#token", TOKEN)
        page.click("#login-form button")
        expect(page.locator("#backend")).to_have_text("redis", timeout=WAIT_MS)
        # Traffic, for the request table to show (it compares two scrapes).
        for i in range(20):
            assert s.api("PUT", f"/v1/cache/user:{i}", b"v")[0] == 200
            assert s.api("GET", f"/v1/cache/user:{i}")[0] == 200
        expect(page.locator("#rates")).to_contain_text("cache", timeout=WAIT_MS)
        shot(page, "overview")

        redis.kill()
        started = time.monotonic()
        expect(page.locator("#backend")).to_have_text("memory", timeout=WAIT_MS)
        took = time.monotonic() - started
        expect(page.locator("#timeline li")).to_have_count(2)
        expect(page.locator("#status")).to_contain_text("last error")
        shot(page, "overview-on-the-fallback")
        print(f"the console showed the outage {took:.1f} s after Redis was killed")
    finally:
        s.stop()
        if redis.process.poll() is None:
            redis.kill()


def test_the_cache_browser_sees_api_writes_and_its_deletes_reach_the_api(page: Page) -> None:
    s = Sidecar({})
    try:
        assert s.api("PUT", "/v1/cache/session:42?ttl_ms=600000&tags=user:7,sessions", b"alice")[0] == 200
        assert s.api("PUT", "/v1/cache/session:43", b"bob")[0] == 200
        assert s.api("PUT", "/v1/cache/other", b"x")[0] == 200
        page.goto(s.console + "#cache")
        # No token configured: no login asked for.
        expect(page.locator("#login")).to_be_hidden()
        page.fill("#pattern", "session:*")
        page.click("#cache-form button")
        expect(page.locator("#keys tr")).to_have_count(2, timeout=WAIT_MS)
        page.click("#keys tr >> text=session:42")
        expect(page.locator("#entry-value")).to_have_text("alice")
        expect(page.locator("#entry-ttl")).to_contain_text("m")
        expect(page.locator("#entry-tags")).to_have_text("sessions, user:7")
        shot(page, "cache")
        page.on("dialog", lambda d: d.accept())
        page.click("#entry-delete")
        expect(page.locator("#keys tr")).to_have_count(1, timeout=WAIT_MS)
        expect(page.locator("#keys")).not_to_contain_text("session:42")
        assert s.api("GET", "/v1/cache/session:42")[0] == 404
        assert s.api("GET", "/v1/cache/session:43")[0] == 200
    finally:
        s.stop()


def test_locks_presence_and_pubsub_pages(page: Page) -> None:
    s = Sidecar({})
    try:
        status, body = s.api("POST", "/v1/locks/orders/acquire", {"ttl_ms": 60000})
        assert status == 200
        lease = json.loads(body)
        page.goto(s.console + "#locks")
        expect(page.locator("#locks")).to_contain_text("orders", timeout=WAIT_MS)
        expect(page.locator("#locks")).to_contain_text(str(lease["fence"]))
        expect(page.locator("body")).not_to_contain_text(lease["token"])
        shot(page, "locks")

        # Presence: live, with no click after the first.
        assert s.api("PUT", "/v1/presence/lobby/alice", {"ttl_ms": 60000, "metadata": {"seat": 1}})[0] == 200
        page.goto(s.console + "#presence")
        page.fill("#room", "lobby")
        page.click("#presence-form button")
        expect(page.locator("#members")).to_contain_text("alice", timeout=WAIT_MS)
        assert s.api("PUT", "/v1/presence/lobby/bob", {"ttl_ms": 60000})[0] == 200
        expect(page.locator("#members")).to_contain_text("bob", timeout=WAIT_MS)

        # Pub/sub: the history replayed, then a publish from the page and
        # one from the API, live.
        assert s.api("POST", "/v1/pubsub/news?durable=true", b"before")[0] == 200
        page.goto(s.console + "#pubsub")
        page.fill("#channel", "news")
        page.check("#replay")
        page.click("#tail-form button")
        expect(page.locator("#messages")).to_contain_text("before", timeout=WAIT_MS)
        page.fill("#message", "from the console")
        page.click("#publish-form button")
        expect(page.locator("#messages")).to_contain_text("from the console", timeout=WAIT_MS)
        assert s.api("POST", "/v1/pubsub/news", b"from the api")[0] == 200
        expect(page.locator("#messages")).to_contain_text("from the api", timeout=WAIT_MS)
        shot(page, "pubsub")
    finally:
        s.stop()


def test_the_console_needs_the_token_when_one_is_set(page: Page) -> None:
    s = Sidecar({"OUTRIGGER_AUTH__TOKEN": TOKEN})
    try:
        page.goto(s.console)
        expect(page.locator("#login")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("main")).to_be_hidden()
        # The page's data comes only with the token.
        status = page.evaluate("fetch('api/v1/admin/status').then(r => r.status)")
        assert status == 401
        page.fill("#token", "wrong")
        page.click("#login-form button")
        expect(page.locator("#login-error")).to_have_text("That token was refused.", timeout=WAIT_MS)
        page.fill("#token", TOKEN)
        page.click("#login-form button")
        expect(page.locator("#backend")).to_have_text("memory", timeout=WAIT_MS)
        expect(page.locator("#login")).to_be_hidden()
    finally:
        s.stop()


def test_without_a_token_the_console_is_not_served_beyond_loopback() -> None:
    s = Sidecar({}, ops_host="0.0.0.0")
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(s.console, timeout=5)
        assert refused.value.code == 404
        log = pathlib.Path(s.log.name).read_text()
        assert "the web console is not served on ops.addr" in log, log
    finally:
        s.stop()
    # With a token it is.
    s = Sidecar({"OUTRIGGER_AUTH__TOKEN": TOKEN}, ops_host="0.0.0.0")
    try:
        with urllib.request.urlopen(s.console, timeout=5) as page:
            assert b"Outrigger console" in page.read()
    finally:
        s.stop()


def test_the_api_listener_serves_the_console_only_when_asked() -> None:
    for asked, served in [({}, False), ({"OUTRIGGER_CONSOLE__API": "true"}, True)]:
        s = Sidecar(asked)
        try:
            url = f"http://127.0.0.1:{s.http}/console/"
            if served:
                with urllib.request.urlopen(url, timeout=5) as page:
                    assert b"Outrigger console" in page.read()
                with urllib.request.urlopen(url + "api/v1/admin/status", timeout=5) as r:
                    assert json.load(r)["backend"] == "memory"
            else:
                with pytest.raises(urllib.error.HTTPError) as missing:
                    urllib.request.urlopen(url, timeout=5)
                assert missing.value.code == 404
        finally:
            s.stop()
