"""The live markets page (ui/, served by hedgehog at `/`) in a real browser:
Debian's Chromium, driven by Playwright, against `hedgehog --simulate`.

Run by tests/browser.sh, which builds the binary and installs what this needs.
"""

import hashlib
import re
import secrets
import time

from playwright.sync_api import expect

from conftest import shot

# Deadlines: generous for a 2-core machine that is also compiling.
SOON = 15_000  # ms


def open_page(page, relay):
    resp = page.goto(relay.url + "/", wait_until="domcontentloaded")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=SOON)
    return resp


def subscribe(page, pair):
    page.locator(f'button.product[data-pair="{pair}"]').click()
    card = page.locator(f'article.card[data-pair="{pair}"]')
    expect(card).to_be_visible(timeout=SOON)
    return card


def ticks(card):
    return int(card.get_attribute("data-ticks") or 0)


def wait_ticks(page, pair, at_least, timeout=SOON):
    page.wait_for_function(
        "([pair, n]) => Number(document.querySelector(`article.card[data-pair=\"${pair}\"]`)?.dataset.ticks || 0) >= n",
        arg=[pair, at_least],
        timeout=timeout,
    )


def test_page_loads_with_no_errors_and_strict_headers(page, relay):
    resp = open_page(page, relay)
    headers = resp.headers
    assert "default-src 'none'" in headers["content-security-policy"]
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["etag"] and headers["cache-control"] == "no-cache"
    expect(page.locator("button.product")).not_to_have_count(0, timeout=SOON)
    expect(page.locator('button.product[data-pair="BTC-USD"]')).to_be_visible()
    expect(page.locator("#source")).to_have_text("simulated", timeout=SOON)
    expect(page.locator("#shard")).to_have_text(re.compile(r"^\d+$"))
    expect(page.locator("#latency")).to_have_text(re.compile(r"^\d+ ms$"), timeout=SOON)
    # The filter box narrows the list.
    page.locator("#filter").fill("eth")
    expect(page.locator("button.product")).not_to_have_count(0)
    for pid in page.locator("button.product").evaluate_all("bs => bs.map(b => b.dataset.pair)"):
        assert "ETH" in pid
    page.locator("#filter").fill("")
    # An API client still gets the JSON index from the same URL.
    index = page.request.get(relay.url + "/", headers={"Accept": "application/json"}).json()
    assert index["name"] == "hedgehog" and index["products"] == "/api/v1/products"
    assert page.evaluate("window.__csp") == []
    assert page.console_errors == []
    shot(page, "loaded")


def test_subscribe_shows_ticks_and_the_curl_line(page, relay):
    open_page(page, relay)
    client_id = page.locator("#client-id").inner_text()
    card = subscribe(page, "BTC-USD")
    wait_ticks(page, "BTC-USD", 3)
    curl = page.locator("#curl").inner_text()
    assert curl.startswith("curl -X POST")
    assert f"X-Client-Id: {client_id}" in curl
    assert "/api/v1/subscribe/BTC-USD?channels=ticker,matches,level2_batch" in curl
    expect(page.locator('button.product[data-pair="BTC-USD"]')).to_have_attribute("aria-pressed", "true")
    expect(card.locator(".price")).not_to_have_text("—")
    expect(card.locator(".bid")).not_to_have_text("—")
    expect(card.locator(".change")).to_have_text(re.compile(r"^[+-]\d+\.\d\d%$"))
    # The chart was seeded from the history and has drawn (pixels on the canvas).
    page.wait_for_function(
        """() => { const c = document.querySelector('article.card canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   for (let i = 3; i < d.length; i += 4) if (d[i]) return true; return false; }""",
        timeout=SOON,
    )
    assert page.evaluate("window.__csp") == []
    assert page.console_errors == []
    subscribe(page, "ETH-USD")
    wait_ticks(page, "ETH-USD", 2)
    # Enough trades for the chart and the tape to show something (the README's picture).
    wait_ticks(page, "BTC-USD", ticks(card) + 12, timeout=30_000)
    shot(page, "markets")
    page.evaluate("document.getElementById('theme').click()")
    expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    wait_ticks(page, "BTC-USD", ticks(card) + 2)
    shot(page, "markets-dark")


# Records, in the page, every (best bid, best ask) the book shows: one sample per
# render of the ladder (the MutationObserver sees each data-version change).
WATCH_BOOK = """() => {
  window.__book = [];
  const t = document.querySelector('article.card[data-pair="BTC-USD"] table.book');
  new MutationObserver(() => {
    if (t.dataset.bestBid) window.__book.push([Number(t.dataset.bestBid), Number(t.dataset.bestAsk)]);
  }).observe(t, { attributes: true, attributeFilter: ['data-version'] });
}"""


def test_the_book_is_never_crossed(page, relay):
    open_page(page, relay)
    card = subscribe(page, "BTC-USD")
    book = card.locator("table.book")
    expect(book).to_have_attribute("data-best-bid", re.compile(r"."), timeout=SOON)
    page.evaluate(WATCH_BOOK)
    # The window the issue asks for: every update shown over 10 s.
    page.wait_for_timeout(10_000)
    samples = page.evaluate("window.__book")
    assert len(samples) >= 20, f"the ladder was redrawn only {len(samples)} times in 10 s"
    crossed = [s for s in samples if not s[0] < s[1]]
    assert not crossed, f"{len(crossed)} of {len(samples)} renders crossed: {crossed[:5]}"
    # The ladder itself: 15 levels a side at most, asks falling towards the
    # spread, bids falling from it.
    asks = [float(x) for x in card.locator(".asks td:first-child").all_inner_texts() if x.strip()]
    bids = [float(x) for x in card.locator(".bids td:first-child").all_inner_texts() if x.strip()]
    assert 0 < len(asks) <= 15 and 0 < len(bids) <= 15
    assert asks == sorted(asks, reverse=True) and bids == sorted(bids, reverse=True)
    assert bids[0] < asks[-1]
    assert page.console_errors == []


def tape(card):
    return [int(x) for x in card.locator("tbody.trades tr").evaluate_all("rs => rs.map(r => r.dataset.tradeId)")]


def test_the_tape_shows_trade_ids_increasing(page, relay):
    open_page(page, relay)
    card = subscribe(page, "BTC-USD")
    expect(card.locator("tbody.trades tr")).not_to_have_count(0, timeout=SOON)
    first = tape(card)
    page.wait_for_function(
        "n => Number(document.querySelector('tbody.trades tr')?.dataset.tradeId) > n", arg=first[0], timeout=SOON
    )
    page.wait_for_function("() => document.querySelectorAll('tbody.trades tr').length >= 5", timeout=SOON)
    later = tape(card)
    assert later[0] > first[0]
    assert all(a > b for a, b in zip(later, later[1:])), f"newest first, strictly: {later}"
    assert len(later) <= 50
    classes = card.locator("tbody.trades tr").evaluate_all("rs => rs.map(r => r.className)")
    assert set(classes) <= {"buy", "sell"}


def test_unsubscribing_stops_updates(page, relay):
    open_page(page, relay)
    card = subscribe(page, "BTC-USD")
    wait_ticks(page, "BTC-USD", 2)
    card.locator("button.unsub").click()
    expect(card).to_have_count(0)
    expect(page.locator('button.product[data-pair="BTC-USD"]')).to_have_attribute("aria-pressed", "false")
    assert page.locator("#curl").inner_text().startswith("curl -X DELETE")
    expect(page.locator("#notes")).to_contain_text("unsubscribed BTC-USD", timeout=SOON)
    before = page.evaluate("window.hedgehog.messages['BTC-USD']")
    # A window in which the simulator (3 trades/s) would have sent a dozen messages.
    page.wait_for_timeout(2_000)
    assert page.evaluate("window.hedgehog.messages['BTC-USD']") == before
    assert page.console_errors == []


def test_a_restarted_relay_is_reconnected_and_resubscribed(page, relays):
    relay = relays("--simulate")
    open_page(page, relay)
    first_id = page.locator("#client-id").inner_text()
    card = subscribe(page, "BTC-USD")
    wait_ticks(page, "BTC-USD", 2)
    relay.stop()
    expect(page.locator("#conn")).to_have_attribute("data-state", "reconnecting", timeout=SOON)
    expect(page.locator("#notes")).to_contain_text("connection to the relay closed")
    shot(page, "reconnecting")
    seen = ticks(card)
    relay.start()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=30_000)
    assert page.locator("#client-id").inner_text() != first_id
    wait_ticks(page, "BTC-USD", seen + 3, timeout=30_000)
    expect(card.locator("tbody.trades tr")).not_to_have_count(0)


def test_hedgehogs_notes_show_gaps_and_upstream_reconnects(page, relays, simulator):
    # The simulator skips trade ids, then drops the relay's feed connection, in turn.
    sim = simulator("--fault", "skip,drop", "--fault-every", "3", "--rate", "10", "--products", "BTC-USD,ETH-USD")
    relay = relays("--upstream-url", sim.url)
    open_page(page, relay)
    subscribe(page, "BTC-USD")
    notes = page.locator("#notes")
    expect(notes.locator('li[data-kind="gap"]').first).to_contain_text("BTC-USD", timeout=30_000)
    expect(notes.locator('li[data-kind="down"]').first).to_contain_text("upstream reconnecting", timeout=30_000)
    expect(notes.locator('li[data-kind="up"]').first).to_contain_text("upstream connected", timeout=30_000)
    expect(page.locator("#upstream")).to_have_attribute("data-state", "connected")
    wait_ticks(page, "BTC-USD", ticks(page.locator('article.card[data-pair="BTC-USD"]')) + 3)
    assert page.console_errors == []
    shot(page, "notes")


def test_an_unknown_pair_is_shown_as_an_error(page, relay):
    open_page(page, relay)
    page.locator("#filter").fill("NOPE-USD")
    page.locator("#filter").press("Enter")
    err = page.locator('#errors .error[data-code="unknown_product"]')
    expect(err).to_be_visible(timeout=SOON)
    expect(err).to_contain_text("NOPE-USD")
    expect(page.locator('article.card[data-pair="NOPE-USD"]')).to_have_count(0)
    page.locator("#filter").fill("not a pair")
    page.locator("#filter").press("Enter")
    expect(page.locator('#errors .error[data-code="bad_pair"]')).to_be_visible(timeout=SOON)
    shot(page, "unknown-pair")


def access_config(tmp_path):
    key = "hh_" + secrets.token_hex(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    path = tmp_path / "access.toml"
    path.write_text(
        f"""
[classes.btc]
allow = ["BTC-*"]
allow_channels = ["*"]
history = true

[[keys]]
principal = "alice"
class = "btc"
hash = "{digest}"
"""
    )
    return path, key


def test_access_control_asks_for_a_key_and_shows_refusals(page, relays, tmp_path):
    config, key = access_config(tmp_path)
    relay = relays("--simulate", "--config", str(config))
    page.goto(relay.url + "/")
    expect(page.locator("#auth")).to_be_visible(timeout=SOON)
    expect(page.locator("#auth-why")).to_contain_text("Access control is on")
    # A wrong key is refused, and said so.
    page.locator("#auth-key").fill("hh_" + "0" * 64)
    page.locator("#auth-key").press("Enter")
    expect(page.locator('#errors .error[data-code="unauthorized"]')).to_be_visible(timeout=SOON)
    expect(page.locator("#auth")).to_be_visible()
    # The right one connects, and the page says what the class may read.
    page.locator("#auth-key").fill(key)
    page.locator("#auth-key").press("Enter")
    expect(page.locator("#auth")).to_be_hidden(timeout=SOON)
    expect(page.locator('#errors .error[data-code="unauthorized"]')).to_have_count(0)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=SOON)
    expect(page.locator("#whoami")).to_have_text("alice (class btc)")
    expect(page.locator("#change-key")).to_be_visible()
    expect(page.locator('button.product[data-pair="ETH-USD"]')).to_have_class(re.compile("denied"))
    expect(page.locator('button.product[data-pair="BTC-USD"]')).not_to_have_class(re.compile("denied"))
    # A pair the class may not read: the refusal is shown.
    page.locator('button.product[data-pair="ETH-USD"]').click()
    err = page.locator('#errors .error[data-code="forbidden"]')
    expect(err).to_be_visible(timeout=SOON)
    expect(err).to_contain_text("ETH-USD")
    expect(page.locator('article.card[data-pair="ETH-USD"]')).to_have_count(0)
    # One it may: data flows, and the curl line names the key without showing it.
    subscribe(page, "BTC-USD")
    wait_ticks(page, "BTC-USD", 2)
    curl = page.locator("#curl").inner_text()
    assert "Authorization: Bearer $HEDGEHOG_KEY" in curl and key not in curl
    shot(page, "access")


def heap(cdp):
    cdp.send("HeapProfiler.collectGarbage")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    return metrics["JSHeapUsedSize"], metrics["Nodes"]


def test_keeps_up_with_a_fast_feed_in_bounded_memory(page, relays, simulator):
    pairs = ["BTC-USD", "ETH-USD", "SOL-USD"]
    sim = simulator("--rate", "200", "--products", ",".join(pairs))
    relay = relays("--upstream-url", sim.url)
    open_page(page, relay)
    for pair in pairs:
        subscribe(page, pair)
    for pair in pairs:
        wait_ticks(page, pair, 50, timeout=30_000)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Performance.enable")
    start_msgs = page.evaluate("Object.values(window.hedgehog.messages).reduce((a, b) => a + b, 0)")
    samples = []
    started = time.monotonic()
    # A minute at about 1,200 feed messages a second; a sample every 5 s.
    while time.monotonic() - started < 60:
        samples.append(heap(cdp))
        page.wait_for_timeout(5_000)
    samples.append(heap(cdp))
    msgs = page.evaluate("Object.values(window.hedgehog.messages).reduce((a, b) => a + b, 0)") - start_msgs
    assert msgs > 60 * 200, f"only {msgs} messages in a minute: the page did not keep up"
    # Still rendering: every card's ticker keeps being redrawn.
    for pair in pairs:
        wait_ticks(page, pair, int(page.get_attribute(f'article.card[data-pair="{pair}"]', "data-ticks")) + 10)
    heaps = [h for h, _ in samples]
    nodes = [n for _, n in samples]
    # Bounded, not a timing: after a forced GC the retained heap of a page whose
    # tape, notes and chart are capped stays near its first value. A leak of even
    # one small object per message (70,000+ messages) would add several MiB;
    # 1.5x plus 8 MiB leaves room for V8's own caches and the chart filling up to
    # its 600 points, and fails such a leak.
    assert max(heaps[-3:]) <= heaps[0] * 1.5 + 8 * 2**20, f"heap samples (bytes): {heaps}"
    # The DOM is trimmed: the node count does not grow with the messages.
    assert max(nodes[-3:]) <= nodes[0] * 1.2 + 200, f"DOM node samples: {nodes}"
    shot(page, "fast")
