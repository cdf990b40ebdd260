#!/usr/bin/env python3
"""Turns bench.sh's raw results (one JSON object per line) into benches/RESULTS.md.

    report.py RAW MODE SECONDS   print the markdown report
    report.py --check RAW        exit non-zero unless every scenario produced data
"""
import json
import platform
import subprocess
import sys
from collections import defaultdict

import report_scaleout

TARGETS = ["hedgehog", "hedgehog-baseline", "nats", "ceiling"]
# hedgehog built from another revision (`bench.sh --baseline REV`), when the run has one.
BASELINE = "hedgehog-baseline"


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def kept_up(r):
    return (r.get("ready", 0) > 0 and r.get("lost", 1) == 0 and r.get("errors", 1) == 0
            and r.get("p99_ms", 1e9) < 100 and r.get("deliveries", 0) > 0 and not r.get("loadgen_saturated"))


def ratio(a, b, higher_is_better=True):
    if a is None or b is None or a == 0 or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}"


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit, dirty = "unknown", ""
    import os
    return model, platform.release(), os.cpu_count(), commit + (" (+uncommitted src changes)" if dirty else "")


def fanout_runs(rows):
    """{(clients, rate): {target: result}} for the fan-out sweep."""
    runs = defaultdict(dict)
    for row in rows:
        runs[(row["result"]["clients"], row["rate"])][row["target"]] = row["result"]
    return runs


def knees_of(runs):
    """Each target's knee per client count, and whether the load generator, not the server, stopped its ladder."""
    knees = defaultdict(dict)
    bound = defaultdict(dict)
    for (clients, rate), s in sorted(runs.items()):
        for t, r in s.items():
            if kept_up(r):
                knees[clients][t] = max(knees[clients].get(t, 0), rate)
            elif r.get("loadgen_saturated") and r.get("lost", 1) == 0 and r.get("errors", 1) == 0:
                bound[clients][t] = True
    return knees, bound


def fanout_section(rows, out):
    runs = fanout_runs(rows)
    out.append("## Fan-out sweep (1 product, `matches`)\n")
    out.append("Per step: deliveries/s, server CPU seconds (/proc), deliveries per server CPU-second, "
               "latency (receive time minus the message's `time`), losses. A target's ladder stops at the "
               "first step where it falls behind. `valid` is no when the load generator saturated its core.\n")
    out.append("| clients | msg/s | target | deliveries/s | server CPU-s | deliveries/CPU-s | p50 ms | p99 ms | p99.9 ms | max ms | lost | kept up | valid |")
    out.append("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for (clients, rate) in sorted(runs):
        for t in TARGETS:
            r = runs[(clients, rate)].get(t)
            if not r:
                continue
            out.append(f"| {clients:,} | {rate} | {t} | {fmt(r.get('deliveries_per_s'), 0)} | {fmt(r.get('server_cpu'), 2)} | "
                       f"{fmt(r.get('per_cpu_s'), 0)} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} | {fmt(r.get('p999_ms'))} | "
                       f"{fmt(r.get('max_ms'))} | {fmt(r.get('lost'))} | {'yes' if kept_up(r) else 'no'} | "
                       f"{'no' if r.get('loadgen_saturated') else 'yes'} |")
    out.append("\nRatios at each step both ran (deliveries per CPU-second: higher is better; p99: lower is better):\n")
    out.append("| clients | msg/s | deliveries/CPU-s hedgehog/nats | hedgehog/ceiling | p99 hedgehog/nats | p99 hedgehog/ceiling |")
    out.append("|---:|---:|---:|---:|---:|---:|")
    for (clients, rate) in sorted(runs):
        s = runs[(clients, rate)]
        h = s.get("hedgehog")
        if not h:
            continue
        n, c = s.get("nats"), s.get("ceiling")
        g = lambda r, k: r.get(k) if r else None
        out.append(f"| {clients:,} | {rate} | {ratio(g(h, 'per_cpu_s'), g(n, 'per_cpu_s'))} | {ratio(g(h, 'per_cpu_s'), g(c, 'per_cpu_s'))} | "
                   f"{ratio(g(h, 'p99_ms'), g(n, 'p99_ms'))} | {ratio(g(h, 'p99_ms'), g(c, 'p99_ms'))} |")
    knees, bound = knees_of(runs)
    out.append("\nThe knee: the highest rate with zero loss and p99 under 100 ms (0: not even the first step). "
               "A `+` marks a ladder stopped by the load generator saturating its core while the server still "
               "delivered everything: the server's real knee is higher than shown, and the ratio is a lower bound "
               "for it (or an upper bound, when the peer is the one marked).\n")
    out.append("| clients | hedgehog | nats | ceiling | hedgehog/nats | hedgehog/ceiling |")
    out.append("|---:|---:|---:|---:|---:|---:|")
    for clients in sorted({c for c, _ in runs}):
        k = knees[clients]
        h, n, c = k.get("hedgehog", 0), k.get("nats", 0), k.get("ceiling", 0)
        mark = lambda t, v: f"{v}{'+' if bound[clients].get(t) else ''}"
        out.append(f"| {clients:,} | {mark('hedgehog', h)} | {mark('nats', n)} | {mark('ceiling', c)} | {ratio(h, n)} | {ratio(h, c)} |")
    return runs, knees


# Access control's step (bench.sh `access`): the same binary without a config (off),
# with a full-tier key (on), and with a throttled class's key.
ACCESS_OFF, ACCESS_ON, THROTTLED = "hedgehog", "hedgehog-access", "hedgehog-throttled"


def pooled_per_cpu(runs):
    """Deliveries per server CPU-second over several runs: all deliveries over all CPU seconds."""
    cpu = sum(r.get("server_cpu", 0) for r in runs)
    return sum(r.get("deliveries", 0) for r in runs) / cpu if cpu else None


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def per_client_rate(r):
    return r.get("deliveries_per_s", 0) / r["clients"] if r.get("clients") else None


def arrived(r):
    """The share of the published tickers a thinned stream delivered, by trade ids: each delivery
    stands for itself and the ids it passed over since the one before."""
    seen = r.get("deliveries", 0) + r.get("skipped", 0)
    return r.get("deliveries", 0) / seen if seen else None


def by_target(rows):
    """The rows of each target, in the order they ran."""
    by = defaultdict(list)
    for row in rows:
        by[row["target"]].append(row)
    return by


def access_section(rows, config, out):
    by = by_target(rows)
    if not by[ACCESS_OFF] or not by[ACCESS_ON]:
        return
    first = by[ACCESS_OFF][0]
    clients, rate = first["result"].get("clients", 0), first["rate"]
    throttle = config[0]["result"].get("throttle_ms") if config else None
    out.append(f"## Access control ({clients:,} clients, 1 product, `ticker`, {rate} msg/s)\n")
    out.append(f"`{ACCESS_OFF}`: no config, access control off. `{ACCESS_ON}`: the same binary with `--config`, "
               "every client presenting an API key (`Authorization: Bearer`) of a class allowing every pair and "
               "channel at full delivery. Access is decided at subscribe, not per message, so deliveries per "
               "CPU-second and latency should match within noise. Rounds take turns at going first (off, on; "
               "on, off; ...). Full-tier tickers carry consecutive trade ids, so `lost` is checked as in the sweep.\n")
    pairs = list(zip(by[ACCESS_OFF], by[ACCESS_ON]))
    rounds_table(rows, pairs, out)
    ons = ratios_table(pairs, "On over off", "on/off", out)
    throttled_table(by[THROTTLED], ons, throttle, out)
    out.append("")


def rounds_table(rows, pairs, out, extra=()):
    """Each round's two runs in the order they ran. EXTRA: (heading, cell(result)) columns after `lost`."""
    out.append("| round | target | deliveries/s | server CPU-s | deliveries/CPU-s | p50 ms | p99 ms | lost | "
               + "".join(f"{h} | " for h, _ in extra) + "valid |")
    out.append("|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extra) + "---|")
    for i, pair in enumerate(pairs, 1):
        for row in sorted(pair, key=rows.index):
            r = row["result"]
            out.append(f"| {i} | {row['target']} | {fmt(r.get('deliveries_per_s'), 0)} | {fmt(r.get('server_cpu'), 2)} | "
                       f"{fmt(r.get('per_cpu_s'), 0)} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} | "
                       f"{fmt(r.get('lost'))} | " + "".join(f"{cell(r)} | " for _, cell in extra)
                       + f"{'no' if r.get('loadgen_saturated') else 'yes'} |")


def ratios_table(pairs, title, label, out):
    """Each pair's second run over its first, per round and over all rounds; returns the second runs' results."""
    out.append(f"\n{title} (deliveries per CPU-second: 1.00x is no cost; latency: 1.00x is no cost). "
               "All rounds: all deliveries over all server CPU seconds, and the mean of each round's latency.\n")
    out.append(f"| round | deliveries/CPU-s {label} | p50 {label} | p99 {label} |")
    out.append("|---|---:|---:|---:|")
    for i, (base, other) in enumerate(pairs, 1):
        a, b = other["result"], base["result"]
        out.append(f"| {i} | {ratio(a.get('per_cpu_s'), b.get('per_cpu_s'))} | {ratio(a.get('p50_ms'), b.get('p50_ms'))} | "
                   f"{ratio(a.get('p99_ms'), b.get('p99_ms'))} |")
    # All rounds: only those where both runs delivered (a failed run has no latency to average).
    both = [(b, o) for b, o in pairs if b["result"].get("deliveries") and o["result"].get("deliveries")]
    others, bases = [o["result"] for _, o in both], [b["result"] for b, _ in both]
    lat = lambda runs, k: mean([r.get(k) for r in runs])
    out.append(f"| all rounds | {ratio(pooled_per_cpu(others), pooled_per_cpu(bases))} | "
               f"{ratio(lat(others, 'p50_ms'), lat(bases, 'p50_ms'))} | {ratio(lat(others, 'p99_ms'), lat(bases, 'p99_ms'))} |")
    return [o["result"] for _, o in pairs]


def throttled_table(rows, full, throttle, out):
    if not rows:
        return
    t = rows[0]["result"]
    full_rate, full_cpu = mean([per_client_rate(r) for r in full]), mean([r.get("server_cpu") for r in full])
    out.append(f"\n`{THROTTLED}`: the same step, the key's class with `throttle_ms = {throttle}` (at most one ticker "
               "per product per interval per client, the newest winning). Trade-id gaps are thinning here, not loss: "
               "`arrived` is the share of the published tickers delivered (deliveries over deliveries plus the ids "
               "passed over). Per-client rate and CPU are set against the full tier's (`hedgehog-access`, mean of its "
               "rounds). Its latency includes the wait for the interval, by design.\n")
    out.append("| deliveries/s | per client/s | full tier per client/s | throttled/full | arrived | server CPU-s | "
               "CPU throttled/full | deliveries/CPU-s | p50 ms | p99 ms | dups | valid |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    share = arrived(t)
    out.append(f"| {fmt(t.get('deliveries_per_s'), 0)} | {fmt(per_client_rate(t))} | {fmt(full_rate)} | "
               f"{ratio(per_client_rate(t), full_rate)} | {'-' if share is None else f'{share:.1%}'} | "
               f"{fmt(t.get('server_cpu'), 2)} | {ratio(t.get('server_cpu'), full_cpu)} | {fmt(t.get('per_cpu_s'), 0)} | "
               f"{fmt(t.get('p50_ms'))} | {fmt(t.get('p99_ms'))} | {fmt(t.get('dups'))} | "
               f"{'no' if t.get('loadgen_saturated') else 'yes'} |")


# Scraping's step (bench.sh `metrics`): the same binary, unscraped and with curl
# fetching the main port's GET /metrics once a second for the whole run.
UNSCRAPED, SCRAPED = "hedgehog", "hedgehog-scraped"


def metrics_section(rows, out):
    by = by_target(rows)
    if not by[UNSCRAPED] or not by[SCRAPED]:
        return
    first = by[UNSCRAPED][0]
    clients, rate = first["result"].get("clients", 0), first["rate"]
    out.append(f"## Metrics scraping ({clients:,} clients, 1 product, `matches`, {rate} msg/s)\n")
    out.append(f"`{UNSCRAPED}`: no scraper. `{SCRAPED}`: the same binary and command line, with curl fetching "
               "`GET /metrics` on the main port once a second from the load cores, from the server's start to the "
               "load generator's end; `scrapes` counts the requests made, `200s` those answered 200 with the "
               "exposition, and `bytes/scrape` is their mean size. A scrape renders every shard's counters, "
               "once a second against tens of thousands of deliveries, so deliveries per CPU-second and latency "
               "should match within noise. Rounds take turns at going first (unscraped, scraped; scraped, "
               "unscraped; ...).\n")
    pairs = list(zip(by[UNSCRAPED], by[SCRAPED]))
    scraped = lambda f: (lambda r: f(r) if "scrapes" in r else "-")
    rounds_table(rows, pairs, out, [("scrapes", scraped(lambda r: fmt(r["scrapes"]))),
                                    ("200s", scraped(lambda r: fmt(r.get("scrapes_ok")))),
                                    ("bytes/scrape", scraped(lambda r: fmt(r.get("scrape_bytes"), 0)))])
    runs = ratios_table(pairs, "Scraped over unscraped", "scraped/unscraped", out)
    made, ok = sum(r.get("scrapes", 0) for r in runs), sum(r.get("scrapes_ok", 0) for r in runs)
    size = sum(r.get("scrape_bytes", 0) * r.get("scrapes_ok", 0) for r in runs) / ok if ok else None
    out.append(f"\nScrapes over all rounds: {made:,} made, {ok:,} answered 200, {fmt(size, 0)} bytes each on average.\n")


# TLS's step (bench.sh `tls_step`): hedgehog and nats-server, each plain and over TLS,
# in rounds rotating who goes first. Issue 15's targets: hedgehog over TLS at
# >= 0.8x hedgehog plain, and >= 2x nats-server over TLS, in deliveries per CPU-second.
TLS_TARGETS = ["hedgehog", "hedgehog-tls", "nats", "nats-tls"]
TLS_RATIOS = [("hedgehog-tls", "hedgehog", "hedgehog TLS/plain", 0.8),
              ("hedgehog-tls", "nats-tls", "hedgehog/nats over TLS", 2.0),
              ("nats-tls", "nats", "nats TLS/plain", None),
              ("hedgehog", "nats", "hedgehog/nats plain", None)]


def tls_rounds(rows):
    """The step's runs grouped by round: each target's i-th run is in round i."""
    by = by_target(rows)
    present = [t for t in TLS_TARGETS if by[t]]
    return [dict(zip(present, runs)) for runs in zip(*(by[t] for t in present))]


def tls_pooled(rounds):
    """Each target's deliveries per CPU-second over all rounds (all deliveries over all CPU
    seconds) and mean p50/p99; rounds where a run delivered nothing are left out."""
    whole = [r for r in rounds if all(x["result"].get("deliveries") for x in r.values())]
    pooled = {}
    for t in TLS_TARGETS:
        runs = [r[t]["result"] for r in whole if t in r]
        if runs:
            pooled[t] = {"per_cpu_s": pooled_per_cpu(runs), "p50_ms": mean([x.get("p50_ms") for x in runs]),
                         "p99_ms": mean([x.get("p99_ms") for x in runs])}
    return pooled


def tls_section(rows, config, out):
    rounds = tls_rounds(rows)
    if not rounds:
        return {}
    first = rows[0]
    clients, rate = first["result"].get("clients", 0), first["rate"]
    suites = sorted({r["result"]["tls"] for r in rows if r["result"].get("tls")})
    served = config[0]["result"].get("hedgehog_tls", True) if config else True
    out.append(f"## TLS ({clients:,} clients, 1 product, `matches`, {rate} msg/s)\n")
    out.append("`hedgehog` and `nats`: plain `ws://`, as in the sweep. `hedgehog-tls`: the same binary with "
               "`--tls-cert`/`--tls-key`, serving `wss://` (and the REST subscribes over `https://`) on its port. "
               "`nats-tls`: nats-server with `tls { cert_file, key_file }` on its WebSocket listener. The "
               "certificates are made for the run (`loadgen certs`: a test CA and an ECDSA P-256 server "
               "certificate for 127.0.0.1); the clients (rustls, ring) trust that CA only and offer AES-128-GCM "
               f"first. Negotiated: {', '.join(f'`{x}`' for x in suites) or 'nothing'}. Rounds rotate who goes "
               "first. Handshakes happen before the measuring window: these figures are the steady stream's.\n")
    if not served:
        out.append("**This hedgehog has no `--tls-cert`: `hedgehog-tls` was left out of this run.**\n")
    rounds_table(rows, [tuple(r.values()) for r in rounds], out)
    pooled = tls_pooled(rounds)
    out.append("\nAll rounds, per target: all deliveries over all server CPU seconds, and the mean of each "
               "round's latency.\n")
    out.append("| target | deliveries/CPU-s | p50 ms | p99 ms |")
    out.append("|---|---:|---:|---:|")
    for t, p in pooled.items():
        out.append(f"| {t} | {fmt(p['per_cpu_s'], 0)} | {fmt(p['p50_ms'])} | {fmt(p['p99_ms'])} |")
    out.append("\nRatios of deliveries per CPU-second (higher is better), by round and over all rounds; "
               "issue 15's targets are hedgehog TLS/plain >= 0.8x and hedgehog/nats over TLS >= 2x.\n")
    shown = [x for x in TLS_RATIOS if x[0] in pooled and x[1] in pooled]
    out.append("| round | " + " | ".join(x[2] for x in shown) + " |")
    out.append("|---|" + "---:|" * len(shown))
    cpu = lambda r, t: r[t]["result"].get("per_cpu_s") if t in r else None
    for i, r in enumerate(rounds, 1):
        out.append(f"| {i} | " + " | ".join(ratio(cpu(r, a), cpu(r, b)) for a, b, _, _ in shown) + " |")
    out.append("| all rounds | " + " | ".join(ratio(pooled[a]["per_cpu_s"], pooled[b]["per_cpu_s"])
                                            for a, b, _, _ in shown) + " |")
    out.append("")
    return pooled


def simple_section(title, rows, cols, out, note=""):
    out.append(f"## {title}\n")
    if note:
        out.append(note + "\n")
    out.append("| target | " + " | ".join(c[0] for c in cols) + " |")
    out.append("|---|" + "---:|" * len(cols))
    by = {r["target"]: r["result"] for r in rows}
    for t in TARGETS:
        if t in by:
            out.append(f"| {t} | " + " | ".join(c[1](by[t]) for c in cols) + " |")
    if "hedgehog" in by:
        for peer in (BASELINE, "nats", "ceiling"):
            if peer in by:
                out.append(f"| hedgehog/{peer} | " + " | ".join(
                    ratio(c[2](by["hedgehog"]), c[2](by[peer])) if len(c) > 2 else "" for c in cols) + " |")
    out.append("")
    return by


def baseline_section(by_scenario, out):
    """hedgehog against the same program built from the baseline revision, figure by figure."""
    out.append("## Against the baseline\n")
    out.append(f"hedgehog (this tree) over `{BASELINE}`, in this one run. Deliveries per CPU-second, knee, "
               "requests/s and connections held: higher is better; latency, RSS and seconds: lower is better. "
               "Each figure is one run per side: to see this machine's noise, run a clean tree with "
               "`--baseline HEAD`, where every difference is noise.\n")
    out.append(f"| figure | hedgehog | {BASELINE} | hedgehog/baseline | note |")
    out.append("|---|---:|---:|---:|---|")
    for name, h, b, shown, note in baseline_figures(by_scenario):
        out.append(f"| {name} | {shown(h)} | {shown(b)} | {ratio(h, b)} | {note} |")
    out.append("")


def baseline_figures(by_scenario):
    """(figure, hedgehog's value, the baseline's value, format, note) for each figure both sides measured."""
    whole, one, two = (lambda v: fmt(v, 0)), fmt, (lambda v: fmt(v, 2))
    runs = fanout_runs(by_scenario["fanout"])
    for (clients, rate), s in sorted(runs.items()):
        h, b = s.get("hedgehog"), s.get(BASELINE)
        if h and b:
            step = f"fan-out {clients:,} x {rate} msg/s"
            yield f"{step}: deliveries/CPU-s", h.get("per_cpu_s"), b.get("per_cpu_s"), whole, caveat(h, b)
            yield f"{step}: p99 ms", h.get("p99_ms"), b.get("p99_ms"), one, ""
    knees, bound = knees_of(runs)
    for clients in sorted({c for c, _ in runs}):
        k = knees[clients]
        marks = "; ".join(f"{t} bound by the load generator" for t in ("hedgehog", BASELINE) if bound[clients].get(t))
        yield f"fan-out knee at {clients:,} clients, msg/s", k.get("hedgehog", 0), k.get(BASELINE, 0), fmt, marks
    by = defaultdict(dict)
    for scenario in ("mix", "idle", "storm", "rest"):
        for r in by_scenario[scenario]:
            by[scenario + (" " + r["method"] if scenario == "rest" else "")][r["target"]] = r["result"]
    pair = lambda key: (by[key].get("hedgehog"), by[key].get(BASELINE))
    mix = pair("mix")
    figures = [
        ("market mix: deliveries/CPU-s", mix, lambda r: r.get("per_cpu_s"), whole, all(mix) and caveat(*mix, behind=False)),
        # Not on a capture: its times are the exchange's (see main).
        *([] if by_scenario["feed"] else [("market mix: p99 ms", mix, lambda r: r.get("p99_ms"), one, "")]),
        ("idle: RSS per connection, bytes", pair("idle"), rss_per_conn, whole, ""),
        ("idle: connections held", pair("idle"), lambda r: r.get("ready"), fmt, ""),
        ("connect storm: seconds to greet all", pair("storm"), lambda r: r.get("ready_seconds"), two, ""),
    ]
    for method in ("POST", "DELETE"):
        sides = pair("rest " + method)
        figures += [(f"REST {method}: requests/s", sides, lambda r: r.get("rps"), whole, ""),
                    (f"REST {method}: p99 ms", sides, lambda r: r.get("p99_ms"), two, "")]
    for name, (h, b), value, shown, note in figures:
        if h and b:
            yield name, value(h), value(b), shown, note


def caveat(h, b, behind=True):
    """Why a pair of runs may not compare: the load generator saturated, or a side fell behind."""
    notes = []
    if h.get("loadgen_saturated") or b.get("loadgen_saturated"):
        notes.append("load generator saturated")
    if behind:
        notes += [f"{t} fell behind" for t, r in (("hedgehog", h), ("baseline", b)) if not kept_up(r)]
    return "; ".join(notes)


def rss_per_conn(r):
    n = r.get("ready", 0)
    return (r.get("rss_after_kib", 0) - r.get("rss_before_kib", 0)) * 1024 / n if n else None


def load_line(rows):
    """The machine's 1-minute load average as each step started and as the run ended, if recorded."""
    if not rows:
        return []
    return ["- Load average (1 min, /proc/loadavg; 2 is both cores busy) as each step started: "
            + ", ".join(f"{r['step'].replace('_', ' ')} {r['result']['load1']:.1f}" for r in rows)]


def main():
    if sys.argv[1] == "--check":
        rows = load(sys.argv[2])
        scenarios = {r["scenario"] for r in rows}
        missing = {"fanout", "mix", "idle", "storm", "rest", "micro"} - scenarios
        # The access step: off, on and throttled, each delivering something.
        access = {r["target"] for r in rows if r["scenario"] == "access" and r["result"].get("deliveries", 0) > 0}
        missing |= {"access " + t for t in (ACCESS_OFF, ACCESS_ON, THROTTLED) if t not in access}
        # The metrics step: unscraped and scraped delivering, the scraper answered 200.
        metrics = {r["target"] for r in rows if r["scenario"] == "metrics" and r["result"].get("deliveries", 0) > 0
                   and (r["target"] != SCRAPED or r["result"].get("scrapes_ok", 0) > 0)}
        missing |= {"metrics " + t for t in (UNSCRAPED, SCRAPED) if t not in metrics}
        # The TLS step: every target delivering, the TLS ones having negotiated TLS.
        served = all(r["result"].get("hedgehog_tls", True) for r in rows if r["scenario"] == "tls-config")
        tls = {r["target"] for r in rows if r["scenario"] == "tls" and r["result"].get("deliveries", 0) > 0
               and (not r["target"].endswith("-tls") or r["result"].get("tls"))}
        missing |= {"tls " + t for t in TLS_TARGETS if t not in tls and (served or t != "hedgehog-tls")}
        missing |= report_scaleout.missing(rows)
        if any(r["scenario"] == "baseline" for r in rows):
            ran = {r["scenario"] for r in rows if r["target"] == BASELINE}
            missing |= {"baseline " + s for s in {"fanout", "mix", "idle", "storm", "rest"} - ran}
        bad = [r for r in rows if r["scenario"] not in ("rest", "baseline", "feed", "access-config", "tls-config", "load")
               and r["result"].get("ready", 0) == 0]
        if missing or bad:
            print(f"bench smoke failed: missing {sorted(missing)}, empty runs {len(bad)}", file=sys.stderr)
            sys.exit(1)
        print(f"bench smoke: {len(rows)} runs, every scenario produced data")
        return
    rows, mode, seconds = load(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    model, kernel, cores, commit = machine()
    by_scenario = defaultdict(list)
    for r in rows:
        by_scenario[r["scenario"]].append(r)
    baseline = [f"- Baseline: `{BASELINE}` is hedgehog built from {b['commit']} ({b['subject']}), put through "
                "every scenario but the micro-benchmarks, each run beside hedgehog's and fed by the same simulator"
                for b in (r["result"] for r in by_scenario["baseline"][:1])]
    import datetime
    out = ["# hedgehog benchmark results\n",
           f"- Machine: {model}, {cores} cores, Linux {kernel}",
           f"- Commit: {commit}; date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
           f"`bash bench.sh {mode}` took {seconds} s",
           *baseline,
           "- Layout: each server pinned to core 0 (hedgehog with `WEB_CONCURRENCY=1`; nats-server 2.9 with its "
           "WebSocket listener, fed by a bridge that publishes the simulator's messages; the ceiling program, which "
           "writes pre-encoded stamped frames, one write per delivery, no logic). Simulator, bridge and load "
           "generator on the other core(s). Loopback only.",
           *load_line(by_scenario["load"]),
           "- Figures are from one run on a shared machine: compare ratios within this file, not across files.",
           "- What bounds these numbers, with profiles, and the targets missed: `benches/ANALYSIS.md` "
           "(written for the committed run; re-read it against a new one).\n"]
    if baseline:
        baseline_section(by_scenario, out)
    runs, knees = fanout_section(by_scenario["fanout"], out)
    out.append("")
    access_section(by_scenario["access"], by_scenario["access-config"], out)
    metrics_section(by_scenario["metrics"], out)
    tls = tls_section(by_scenario["tls"], by_scenario["tls-config"], out)
    report_scaleout.section(by_scenario["scaleout"], by_scenario["scaleout-msgs"], out)
    feed = [r["result"] for r in by_scenario["feed"]][:1]
    title = "Market mix (50 products, Zipf popularity, 3 subscriptions per client, 2,000 msg/s upstream)"
    latency = [("p50 ms", lambda r: fmt(r.get("p50_ms")), lambda r: r.get("p50_ms")),
               ("p99 ms", lambda r: fmt(r.get("p99_ms")), lambda r: r.get("p99_ms")),
               ("max ms", lambda r: fmt(r.get("max_ms")))]
    if feed:
        # A capture's times are the exchange's, not the moment the simulator sent
        # the message: latency is not measured, and lost/dups count the loop's restarts.
        title = (f"Market mix on a capture ({feed[0]['file']} replayed and looped, {feed[0]['products']} products "
                 "busiest first, Zipf popularity, 3 subscriptions per client; latency not measured)")
        latency = []
    mix = simple_section(title, by_scenario["mix"], [
                             ("clients", lambda r: fmt(r.get("ready"))),
                             ("deliveries/s", lambda r: fmt(r.get("deliveries_per_s"), 0), lambda r: r.get("deliveries_per_s")),
                             ("deliveries/CPU-s", lambda r: fmt(r.get("per_cpu_s"), 0), lambda r: r.get("per_cpu_s")),
                             *latency,
                             ("lost", lambda r: fmt(r.get("lost"))),
                             ("valid", lambda r: "no" if r.get("loadgen_saturated") else "yes"),
                         ], out)
    idle = simple_section("Idle capacity", by_scenario["idle"], [
        ("connections held", lambda r: fmt(r.get("ready")), lambda r: r.get("ready")),
        ("errors", lambda r: fmt(r.get("errors"))),
        ("server RSS delta MiB", lambda r: fmt((r.get("rss_after_kib", 0) - r.get("rss_before_kib", 0)) / 1024, 1)),
        ("RSS per connection (bytes)", lambda r: fmt(rss_per_conn(r), 0), rss_per_conn),
    ], out, "Server RSS (`/proc/PID/smaps_rollup`) after all connections are up, minus before, over the connections held. Lower is better.")
    storm = simple_section("Connect storm", by_scenario["storm"], [
        ("connections", lambda r: fmt(r.get("ready"))),
        ("errors", lambda r: fmt(r.get("errors"))),
        ("seconds to accept and greet all", lambda r: fmt(r.get("ready_seconds"), 2), lambda r: r.get("ready_seconds")),
    ], out, "From the first connect to the last greeting (hedgehog's welcome, nats' INFO, the ceiling's handshake); one load generator connecting as fast as it can. Lower is better.")
    out.append("## REST (wrk, 16 keep-alive connections, hedgehog only)\n")
    out.append("nats-server and the ceiling have no subscription API, so there is no peer for this row.\n")
    out.append("| request | requests/s | p99 ms | non-2xx |")
    out.append("|---|---:|---:|---:|")
    for r in by_scenario["rest"]:
        x = r["result"]
        who = f" ({r['target']})" if r["target"] != "hedgehog" else ""
        out.append(f"| {r['method']} /api/v1/subscribe/BTC-USD{who} | {fmt(x.get('rps'), 0)} | {fmt(x.get('p99_ms'), 2)} | {x.get('non_2xx')} |")
    out.append("")
    out.append("## Micro-benchmarks (criterion, `cargo bench --bench micro`)\n")
    out.append("| benchmark | time per iteration |")
    out.append("|---|---:|")
    for r in by_scenario["micro"]:
        ns = r["result"].get("ns")
        if ns is None:
            continue
        shown = f"{ns / 1000:,.1f} us" if ns >= 10_000 else f"{ns:,.0f} ns"
        out.append(f"| {r['name']} | {shown} |")
    out.append("")
    out.append("## Targets\n")
    out.append("| target | measured | met |")
    out.append("|---|---|---|")
    for clients, rate in [(1000, 10), (1000, 50)]:
        s = runs.get((clients, rate), {})
        h, n, c = (s.get(t, {}).get("per_cpu_s") for t in ("hedgehog", "nats", "ceiling"))
        if h:
            out.append(f"| deliveries/CPU-s >= 2x nats at {clients:,} x {rate}/s | {ratio(h, n)} | {'yes' if n and h >= 2 * n else 'no'} |")
            out.append(f"| deliveries/CPU-s >= 0.8x ceiling at {clients:,} x {rate}/s | {ratio(h, c)} | {'yes' if c and h >= 0.8 * c else 'no'} |")
        hp, cp = s.get("hedgehog", {}).get("p99_ms"), s.get("ceiling", {}).get("p99_ms")
        if hp and cp:
            out.append(f"| p99 <= 1.5x ceiling's at {clients:,} x {rate}/s | {ratio(hp, cp)} | {'yes' if hp <= 1.5 * cp else 'no'} |")
    for clients in sorted(knees):
        h, n = knees[clients].get("hedgehog", 0), knees[clients].get("nats", 0)
        out.append(f"| knee >= 2x nats' at {clients:,} clients | {h} vs {n} msg/s | {'yes' if h >= 2 * max(n, 1) else 'no'} |")
    for a, b, name, goal in TLS_RATIOS:
        if goal and a in tls and b in tls:
            x, y = tls[a]["per_cpu_s"], tls[b]["per_cpu_s"]
            out.append(f"| deliveries/CPU-s {name} >= {goal:g}x (TLS step, all rounds) | {ratio(x, y)} | "
                       f"{'yes' if x and y and x >= goal * y else 'no'} |")
    h = idle.get("hedgehog")
    if h:
        per = rss_per_conn(h)
        out.append(f"| <= 4 KiB RSS per idle connection | {fmt(per, 0)} bytes | {'yes' if per is not None and per <= 4096 else 'no'} |")
        out.append(f"| 19,000 connections held by one process | {fmt(h.get('ready'))} | {'yes' if h.get('ready', 0) >= 19000 else 'no'} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
