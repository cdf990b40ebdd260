"""Fixtures for the page's end-to-end tests: relays (and a simulator) started from
the binary that tests/browser.sh built, and Debian's Chromium driven by Playwright.

Every wait has a deadline; nothing sleeps to synchronise. Loopback only.
"""

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

BIN = os.environ.get("HEDGEHOG_BIN", "target/debug/hedgehog")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("SCREENSHOTS", tempfile.mkdtemp(prefix="hedgehog-shots.")))
# Debian's Chromium as root, headless, with nothing reaching out to the network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Exposes performance.memory's real figures (the memory test reads the heap by CDP too).
    "--enable-precise-memory-info",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_line(proc, log, pattern, what, deadline=30):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        text = log.read_text(errors="replace")
        m = re.search(pattern, text)
        if m:
            return m
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited: {text[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"{what} did not start within {deadline} s: {log.read_text()[-2000:]}")


class Relay:
    """`hedgehog` on a fixed loopback port, so that it can be restarted on it."""

    def __init__(self, tmp, *args, port=None):
        self.tmp = Path(tmp)
        self.args = list(args)
        self.port = port or free_port()
        self.proc = None
        self.starts = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.starts += 1
        log = self.tmp / f"relay-{self.port}-{self.starts}.log"
        cmd = [BIN, "--host", "127.0.0.1", "--port", str(self.port), *self.args]
        env = {**os.environ, "WEB_CONCURRENCY": "2", "RUST_LOG": "info"}
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        wait_for_line(self.proc, log, r"hedgehog listening on", "the relay")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class Simulator:
    def __init__(self, tmp, *args):
        log = Path(tmp) / "simulator.log"
        env = {**os.environ, "RUST_LOG": "info"}
        cmd = [BIN, "simulate", "--host", "127.0.0.1", "--port", "0", "--subscribe-timeout", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        self.url = wait_for_line(self.proc, log, r"simulator listening on (ws://[0-9.:]+)", "the simulator").group(1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=15)


@pytest.fixture
def relays(tmp_path):
    """Starts relays on demand; stops them all at the end of the test."""
    started = []

    def start(*args, port=None):
        r = Relay(tmp_path, *args, port=port).start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def relay(relays):
    return relays("--simulate")


@pytest.fixture
def simulator(tmp_path):
    sims = []

    def start(*args):
        s = Simulator(tmp_path, *args)
        sims.append(s)
        return s

    yield start
    for s in sims:
        s.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


# Every CSP violation the page reports, kept where the test can read it.
CSP_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', e =>
  window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, color_scheme="light")
    pg = context.new_page()
    pg.add_init_script(CSP_WATCH)
    pg.console_errors = []
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
    pg.on("pageerror", lambda e: pg.console_errors.append(f"uncaught: {e}"))
    yield pg
    context.close()


def shot(page, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path
