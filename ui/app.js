// hedgehog's live markets page. Plain ES modules, no build step, no third-party
// code. One WebSocket (`/ws`) carries every subscribed pair; subscriptions go
// through the REST API with the socket's client id, as a user's own client would,
// and each action shows its curl equivalent.
//
// Smoothness: messages only update models (books, tapes, tickers, charts) and mark
// them dirty; one requestAnimationFrame renders what changed. Everything kept is
// bounded: the tape's rows, the notes, the chart's points, the errors shown.

import { Book } from "./book.js";
import { Chart, formatPrice } from "./chart.js";

const CHANNELS = "ticker,matches,level2_batch";
const TAPE_ROWS = 50;
const BOOK_LEVELS = 15;
const NOTES = 50;
const ERRORS = 3;
const HISTORY = 200;
const BACKOFF_MS = [500, 10_000];
const HEALTH_EVERY_MS = 5_000;

const $ = (id) => document.getElementById(id);

const state = {
  key: sessionStorage.getItem("hedgehog-key") || "",
  ws: null,
  clientId: null,
  attempt: 0,
  retryTimer: null,
  needsKey: false,
  products: [],
  allowed: null, // pair -> channels the class may read (access control on)
  markets: new Map(), // pair -> Market
  frame: 0,
};

// What tests and curious users can read from the console.
window.hedgehog = { messages: {}, state };

// ---- HTTP -----------------------------------------------------------------

function authHeaders() {
  return state.key ? { Authorization: `Bearer ${state.key}` } : {};
}

async function api(method, path) {
  const resp = await fetch(path, { method, headers: { ...authHeaders(), ...(state.clientId ? { "X-Client-Id": state.clientId } : {}) } });
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  return { ok: resp.ok, status: resp.status, body, shard: resp.headers.get("X-Hedgehog-Shard") };
}

function curlFor(method, path) {
  const parts = ["curl"];
  if (method !== "GET") parts.push(`-X ${method}`);
  parts.push(`-H 'X-Client-Id: ${state.clientId || "<client id>"}'`);
  if (state.key) parts.push(`-H "Authorization: Bearer $HEDGEHOG_KEY"`);
  parts.push(`'${location.origin}${path}'`);
  return parts.join(" ");
}

function showCurl(method, path) {
  $("curl").textContent = curlFor(method, path);
}

// ---- errors and notes -------------------------------------------------------

function showError(title, body, status) {
  const box = $("errors");
  const div = document.createElement("div");
  div.className = "error";
  div.dataset.code = (body && body.error) || String(status || "");
  const text = document.createElement("span");
  const code = body && body.error ? ` (${status} ${body.error})` : status ? ` (${status})` : "";
  text.textContent = `${title}${code}: ${(body && body.message) || "no answer"}`;
  const close = document.createElement("button");
  close.type = "button";
  close.textContent = "Dismiss";
  close.setAttribute("aria-label", "Dismiss this error");
  close.addEventListener("click", () => div.remove());
  div.append(text, close);
  box.prepend(div);
  while (box.children.length > ERRORS) box.lastElementChild.remove();
}

function note(kind, text) {
  const list = $("notes");
  const li = document.createElement("li");
  li.className = `note note-${kind}`;
  li.dataset.kind = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  li.append(time, ` ${text}`);
  list.prepend(li);
  while (list.children.length > NOTES) list.lastElementChild.remove();
}

// ---- products -------------------------------------------------------------

async function loadProducts() {
  let r;
  try {
    r = await api("GET", "/api/v1/products");
  } catch {
    setTimeout(loadProducts, 2000);
    return;
  }
  if (r.status === 401) {
    askForKey(r.body && r.body.message);
    return;
  }
  if (!r.ok) {
    showError("Products", r.body, r.status);
    return;
  }
  hideKeyForm();
  const b = r.body;
  state.products = b.products;
  state.allowed = null;
  if (b.principal) {
    state.allowed = new Map(b.products.map((p) => [p.id, p.channels || []]));
    $("whoami-box").hidden = false;
    $("whoami").textContent = `${b.principal} (class ${b.class})`;
  }
  renderProducts();
  if (!b.listed) setTimeout(loadProducts, 1000); // the feed has not listed them yet
  if (!state.ws) connect();
}

function renderProducts() {
  const filter = $("filter").value.trim().toUpperCase();
  const list = $("products");
  const shown = state.products.filter((p) => !filter || p.id.includes(filter) || (p.display_name || "").toUpperCase().includes(filter));
  $("products-count").textContent = `${shown.length} of ${state.products.length}`;
  const frag = document.createDocumentFragment();
  for (const p of shown.slice(0, 300)) {
    const li = document.createElement("li");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "product";
    btn.dataset.pair = p.id;
    const on = state.markets.has(p.id);
    btn.setAttribute("aria-pressed", String(on));
    const allowed = !state.allowed || (state.allowed.get(p.id) || []).length > 0;
    btn.classList.toggle("denied", !allowed);
    const id = document.createElement("span");
    id.className = "pid";
    id.textContent = p.id;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = `${p.base} / ${p.quote} · ${p.status}${allowed ? "" : " · not allowed"}`;
    btn.append(id, meta);
    btn.setAttribute("aria-label", `${p.id}, ${p.base} in ${p.quote}, ${p.status}${allowed ? "" : ", not allowed for your class"}; ${on ? "subscribed, press to unsubscribe" : "press to subscribe"}`);
    btn.addEventListener("click", () => (state.markets.has(p.id) ? unsubscribe(p.id) : subscribe(p.id)));
    li.append(btn);
    frag.append(li);
  }
  list.replaceChildren(frag);
}

// ---- the WebSocket ----------------------------------------------------------

function setConn(stateName, text) {
  const el = $("conn");
  el.dataset.state = stateName;
  el.textContent = text;
}

function connect() {
  if (state.ws) return; // one socket at a time, whoever asks
  clearTimeout(state.retryTimer);
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const query = state.key ? `?token=${encodeURIComponent(state.key)}` : "";
  const ws = new WebSocket(`${scheme}//${location.host}/ws${query}`);
  state.ws = ws;
  setConn("connecting", state.attempt ? `reconnecting (try ${state.attempt + 1})` : "connecting");
  ws.onmessage = (ev) => onMessage(ev.data);
  ws.onclose = (ev) => onClose(ws, ev);
}

function onClose(ws, ev) {
  if (state.ws !== ws) return;
  state.clientId = null;
  $("client-id").textContent = "…";
  const why = ev.reason ? `${ev.code} ${ev.reason}` : `code ${ev.code}`;
  const delay = Math.min(BACKOFF_MS[1], BACKOFF_MS[0] * 2 ** state.attempt) * (0.75 + Math.random() / 4);
  state.attempt++;
  setConn("reconnecting", `reconnecting in ${(delay / 1000).toFixed(1)} s`);
  note(ev.code === 1008 ? "error" : "conn", `connection to the relay closed (${why}); reconnecting in ${(delay / 1000).toFixed(1)} s`);
  if (ev.code === 1008 && ev.reason) showError("The relay closed the connection", { message: ev.reason }, 1008);
  state.retryTimer = setTimeout(() => {
    // Asks the products first: a refused key shows as such, not as a loop of closes.
    state.ws = null;
    loadProducts();
  }, delay);
}

function onMessage(data) {
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return; // clients must survive text that is not JSON
  }
  const pair = msg.product_id;
  if (pair) window.hedgehog.messages[pair] = (window.hedgehog.messages[pair] || 0) + 1;
  const m = pair && state.markets.get(pair);
  switch (msg.type) {
    case "welcome":
      return welcome(msg);
    case "ticker":
      return m && m.ticker(msg);
    case "match":
    case "last_match":
      return m && m.trade(msg);
    case "snapshot":
      return m && m.snapshot(msg);
    case "l2update":
      return m && m.l2update(msg);
    case "upstream":
      return upstreamNote(msg);
    case "gap":
      return note("gap", `${pair}: trades ${msg.expected_trade_id}..${msg.received_trade_id - 1} went missing upstream; hedgehog resubscribed it`);
    case "subscribed":
      return note("sub", `subscribed ${pair}: ${msg.channels.join(", ")}`);
    case "unsubscribed":
      if (msg.reason) {
        note("error", `${pair} ended by hedgehog: ${msg.reason}`);
        showError(`${pair} withdrawn`, { message: msg.reason }, 403);
        dropMarket(pair);
      } else {
        note("sub", `unsubscribed ${pair}`);
      }
      return;
    case "error":
      note("error", `${msg.message}${msg.reason ? `: ${msg.reason}` : ""}`);
      return;
    case "auth":
      return note("auth", msg.event === "expiring" ? `the token expires at ${msg.expires}` : `authenticated as ${msg.principal}`);
    default:
      return;
  }
}

function welcome(msg) {
  state.clientId = msg.client_id;
  state.attempt = 0;
  const shard = parseInt(msg.client_id.split("-")[0], 16);
  $("client-id").textContent = msg.client_id;
  $("shard").textContent = Number.isFinite(shard) ? String(shard) : "?";
  setConn("live", "live");
  note("conn", `connected to the relay as ${msg.client_id}`);
  for (const [pair, m] of state.markets) {
    m.reset();
    subscribe(pair, { again: true });
  }
}

function upstreamNote(msg) {
  setUpstream(msg.state);
  note(msg.state === "connected" ? "up" : "down", `upstream ${msg.state}${msg.reason ? `: ${msg.reason}` : ""}`);
}

function setUpstream(s) {
  const el = $("upstream");
  el.dataset.state = s;
  el.textContent = s;
}

// ---- subscriptions ----------------------------------------------------------

async function subscribe(raw, { again = false } = {}) {
  const pair = raw.trim().toUpperCase();
  if (!pair) return;
  const path = `/api/v1/subscribe/${encodeURIComponent(pair)}?channels=${CHANNELS}`;
  showCurl("POST", path);
  if (!state.clientId) {
    showError(`Subscribe ${pair}`, { message: "not connected to the relay yet; try again in a moment" });
    return;
  }
  // The market exists before the answer: the relay sends the latest ticker and
  // the book's snapshot on the WebSocket as it subscribes, before the REST reply.
  const fresh = !state.markets.has(pair);
  if (fresh) {
    state.markets.set(pair, new Market(pair));
    renderProducts();
  }
  const r = await api("POST", path).catch(() => ({ ok: false, status: 0, body: null }));
  if (!r.ok) {
    showError(`Subscribe ${pair}`, r.body, r.status);
    if (fresh || again) dropMarket(pair);
    return;
  }
  const m = state.markets.get(pair);
  if (m) m.seed();
}

async function unsubscribe(pair) {
  const path = `/api/v1/subscribe/${encodeURIComponent(pair)}`;
  showCurl("DELETE", path);
  dropMarket(pair);
  if (!state.clientId) return;
  const r = await api("DELETE", path).catch(() => ({ ok: false, status: 0, body: null }));
  if (!r.ok) showError(`Unsubscribe ${pair}`, r.body, r.status);
}

function dropMarket(pair) {
  const m = state.markets.get(pair);
  if (!m) return;
  m.card.remove();
  state.markets.delete(pair);
  $("empty").hidden = state.markets.size > 0;
  renderProducts();
}

// ---- one market: models, then rendering once per frame ---------------------------

class Market {
  constructor(pair) {
    this.pair = pair;
    this.card = $("card-template").content.firstElementChild.cloneNode(true);
    this.card.dataset.pair = pair;
    this.card.setAttribute("aria-label", `${pair} market`);
    this.q = (sel) => this.card.querySelector(sel);
    this.q(".pair").textContent = pair;
    this.q(".unsub").addEventListener("click", () => unsubscribe(pair));
    this.q(".unsub").setAttribute("aria-label", `Unsubscribe ${pair}`);
    this.book = new Book();
    this.chart = new Chart(this.q(".chart"));
    this.bookRows = { asks: rows(this.q(".asks"), BOOK_LEVELS, 2), bids: rows(this.q(".bids"), BOOK_LEVELS, 2) };
    $("cards").append(this.card);
    $("empty").hidden = true;
    this.reset();
  }

  reset() {
    this.last = null; // the latest ticker
    this.shownPrice = null;
    this.pending = []; // trades not yet on the tape, oldest first
    this.lastTradeId = 0;
    this.maxSize = 0;
    this.drawnBook = -1;
    this.tickerDirty = false;
    this.book.clear();
    this.q(".trades").replaceChildren();
    this.q(".card-status").textContent = "waiting for data…";
    schedule(this);
  }

  // The chart's start: the pair's recent tickers, if the class may read history.
  async seed() {
    if (this.seeded) return;
    this.seeded = true;
    const r = await api("GET", `/api/v1/history/${encodeURIComponent(this.pair)}?channel=ticker&limit=${HISTORY}`).catch(() => null);
    if (!r) return;
    if (!r.ok) {
      note("error", `history of ${this.pair} refused: ${(r.body && r.body.message) || r.status}`);
      return;
    }
    for (const t of r.body) this.chart.add(Date.parse(t.time), Number(t.price));
    schedule(this);
  }

  ticker(msg) {
    this.last = msg;
    this.chart.add(Date.parse(msg.time), Number(msg.price));
    this.tickerDirty = true;
    schedule(this);
  }

  trade(msg) {
    if (msg.trade_id <= this.lastTradeId) return; // a repeated last_match
    this.lastTradeId = msg.trade_id;
    this.pending.push(msg);
    if (this.pending.length > TAPE_ROWS) this.pending.splice(0, this.pending.length - TAPE_ROWS);
    schedule(this);
  }

  snapshot(msg) {
    this.book.snapshot(msg);
    schedule(this);
  }

  l2update(msg) {
    this.book.update(msg);
    schedule(this);
  }

  render() {
    if (this.tickerDirty) this.renderTicker();
    if (this.book.version !== this.drawnBook) this.renderBook();
    if (this.pending.length) this.renderTape();
    this.chart.draw();
  }

  renderTicker() {
    this.tickerDirty = false;
    const t = this.last;
    const price = Number(t.price);
    const el = this.q(".price");
    el.textContent = formatPrice(price);
    if (this.shownPrice !== null && price !== this.shownPrice) {
      el.classList.remove("up", "down");
      void el.offsetWidth; // restarts the flash animation
      el.classList.add(price > this.shownPrice ? "up" : "down");
    }
    this.shownPrice = price;
    const open = Number(t.open_24h);
    const change = this.q(".change");
    if (open > 0) {
      const pct = ((price - open) / open) * 100;
      const shown = pct.toFixed(2) === "-0.00" ? "0.00" : pct.toFixed(2);
      change.textContent = `${shown.startsWith("-") ? "" : "+"}${shown}%`;
      change.dataset.sign = shown.startsWith("-") ? "down" : "up";
    }
    const bid = Number(t.best_bid);
    const ask = Number(t.best_ask);
    this.q(".bid").textContent = Number.isFinite(bid) ? formatPrice(bid) : "—";
    this.q(".ask").textContent = Number.isFinite(ask) ? formatPrice(ask) : "—";
    this.q(".spread").textContent = Number.isFinite(bid) && Number.isFinite(ask) ? formatPrice(ask - bid) : "—";
    this.q(".volume").textContent = Number(t.volume_24h).toLocaleString("en-US", { maximumFractionDigits: 2 });
    this.q(".card-status").textContent = `last trade ${new Date(t.time).toLocaleTimeString()}`;
    this.card.dataset.ticks = String(Number(this.card.dataset.ticks || 0) + 1);
    this.card.dataset.price = t.price;
  }

  renderBook() {
    this.drawnBook = this.book.version;
    const { bids, asks } = this.book.top(BOOK_LEVELS);
    const depth = (side) => {
      let sum = 0;
      return side.map((l) => (sum += l.size));
    };
    const bidDepth = depth(bids);
    const askDepth = depth(asks);
    const most = Math.max(bidDepth[bidDepth.length - 1] || 0, askDepth[askDepth.length - 1] || 0) || 1;
    // Asks top down from the highest shown, so the best ask sits by the spread.
    fillLevels(this.bookRows.asks, [...asks].reverse(), [...askDepth].reverse(), most, true);
    fillLevels(this.bookRows.bids, bids, bidDepth, most, false);
    const table = this.q(".book");
    const spread = this.q(".spread-row");
    if (bids.length && asks.length) {
      table.dataset.bestBid = String(bids[0].price);
      table.dataset.bestAsk = String(asks[0].price);
      spread.textContent = `spread ${formatPrice(asks[0].price - bids[0].price)}`;
    } else {
      delete table.dataset.bestBid;
      delete table.dataset.bestAsk;
      spread.textContent = this.book.ready ? "one side empty" : "waiting for the book…";
    }
    table.dataset.version = String(this.book.version);
  }

  renderTape() {
    const body = this.q(".trades");
    const frag = document.createDocumentFragment();
    for (const t of this.pending) this.maxSize = Math.max(this.maxSize * 0.99, Number(t.size));
    for (let i = this.pending.length - 1; i >= 0; i--) {
      const t = this.pending[i];
      // `side` is the maker's: a sell maker means the taker bought.
      const buy = t.side === "sell";
      const tr = document.createElement("tr");
      tr.className = buy ? "buy" : "sell";
      tr.dataset.tradeId = String(t.trade_id);
      const weight = Math.min(1, Number(t.size) / (this.maxSize || 1));
      tr.style.setProperty("--weight", `${Math.max(4, weight * 100).toFixed(0)}%`);
      tr.setAttribute("aria-label", `${buy ? "buy" : "sell"} ${t.size} at ${t.price}`);
      for (const text of [new Date(t.time).toLocaleTimeString(), formatPrice(Number(t.price)), t.size]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      frag.append(tr);
    }
    this.pending = [];
    body.prepend(frag);
    while (body.children.length > TAPE_ROWS) body.lastElementChild.remove();
  }
}

function rows(tbody, n, cells) {
  const out = [];
  for (let i = 0; i < n; i++) {
    const tr = document.createElement("tr");
    for (let c = 0; c < cells; c++) tr.append(document.createElement("td"));
    tbody.append(tr);
    out.push(tr);
  }
  return out;
}

// Fills a side's rows; `padTop` leaves the empty rows at the top (the asks, shown
// highest first, so that the best ask stays next to the spread).
function fillLevels(trs, levels, depth, most, padTop) {
  const offset = padTop ? trs.length - levels.length : 0;
  trs.forEach((tr, i) => {
    const l = levels[i - offset];
    const [price, size] = tr.children;
    price.textContent = l ? l.text : "";
    size.textContent = l ? l.size.toFixed(4) : "";
    tr.style.setProperty("--depth", l ? `${((depth[i - offset] / most) * 100).toFixed(1)}%` : "0%");
  });
}

// ---- the frame loop -------------------------------------------------------------

const dirty = new Set();

function schedule(market) {
  dirty.add(market);
  if (!state.frame) state.frame = requestAnimationFrame(frame);
}

function frame() {
  state.frame = 0;
  for (const m of dirty) if (state.markets.get(m.pair) === m) m.render();
  dirty.clear();
}

// ---- health, theme, access ------------------------------------------------------

async function health() {
  const start = performance.now();
  try {
    const r = await fetch("/healthz");
    const b = await r.json();
    $("latency").textContent = `${Math.round(performance.now() - start)} ms`;
    const feed = b.upstream && b.upstream.url ? b.upstream.url.replace(/^wss?:\/\//, "").split("/")[0] : "";
    $("source").textContent = b.replay ? "replayed capture" : b.simulated ? "simulated" : `live feed ${feed}`;
    if ($("upstream").dataset.state === "unknown" && b.upstream) setUpstream(b.upstream.state);
  } catch {
    $("latency").textContent = "—";
  }
  setTimeout(health, HEALTH_EVERY_MS);
}

function askForKey(why) {
  state.needsKey = true;
  $("auth").hidden = false;
  $("auth-why").textContent = state.key
    ? `The relay refused that key or token: ${why || "unauthorized"}.`
    : `Access control is on: ${why || "a credential is required"}. Paste an API key or a token to connect.`;
  if (state.key) showError("Access", { error: "unauthorized", message: why || "the key was refused" }, 401);
  setConn("closed", "needs a key");
  $("auth-key").focus();
}

function hideKeyForm() {
  state.needsKey = false;
  $("auth").hidden = true;
  for (const e of document.querySelectorAll('#errors .error[data-code="unauthorized"]')) e.remove();
}

function setupTheme() {
  const saved = localStorage.getItem("hedgehog-theme");
  const dark = saved ? saved === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = dark ? "dark" : "light";
  $("theme").addEventListener("click", () => {
    const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem("hedgehog-theme", next);
    for (const m of state.markets.values()) {
      m.chart.dirty = true;
      schedule(m);
    }
  });
}

function setup() {
  setupTheme();
  $("filter").addEventListener("input", renderProducts);
  $("pair-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    subscribe($("filter").value);
  });
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("auth-key").value.trim();
    sessionStorage.setItem("hedgehog-key", state.key);
    if (state.ws) state.ws.close();
    state.ws = null;
    loadProducts();
  });
  $("change-key").addEventListener("click", () => {
    $("auth").hidden = false;
    $("auth-why").textContent = `Connected as ${$("whoami").textContent}. Paste an API key or a token to connect as someone else.`;
    $("auth-key").focus();
  });
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("curl").textContent);
      $("copy").textContent = "Copied";
    } catch {
      getSelection().selectAllChildren($("curl"));
      $("copy").textContent = "Selected";
    }
    setTimeout(() => ($("copy").textContent = "Copy"), 1500);
  });
  window.addEventListener("resize", () => {
    for (const m of state.markets.values()) schedule(m);
  });
  loadProducts();
  health();
}

setup();
