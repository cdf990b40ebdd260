"""RESULTS.md's "Scale-out" section (bench.sh `scale_out`, issue 17), for report.py.

Two halves, each in rounds taking turns between one process (`hedgehog`) and the
cluster (`cluster`: 1 ingest and 2 edges over a nats-server with JetStream):

- `scaleout`: the fan-out step, the clients split between the edges. Deliveries per
  CPU-second of the edges (their CPU summed) against the one process's; the
  latency the NATS hop adds is the cluster's p50/p99 minus the one process's.
- `scaleout-msgs`: two clients (one per edge) following many products at a high
  message rate, so each process's CPU is priced per message rather than per
  delivery; nats-server's /connz gives the bytes each message costs an edge.
"""
from collections import defaultdict

SINGLE, CLUSTER = "hedgehog", "cluster"


def fmt(v, digits=1):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def rounds_of(rows):
    """[(single, cluster)] results, the i-th run of each in round i; rounds where
    either delivered nothing are left out of the pooled figures, not of the table."""
    by = defaultdict(list)
    for row in rows:
        by[row["target"]].append(row["result"])
    return list(zip(by[SINGLE], by[CLUSTER]))


def whole(rounds):
    return [(s, c) for s, c in rounds if s.get("deliveries") and c.get("deliveries")]


def us_per(cpu, count):
    return cpu / count * 1e6 if cpu is not None and count else None


def side(r, name):
    return (r.get("side_cpu") or {}).get(name)


def edge_cpus(r):
    return r.get("server_cpus") or [r.get("server_cpu")]


def hop(c, s, key):
    return c[key] - s[key] if c.get(key) is not None and s.get(key) is not None else None


def signed(v):
    return "-" if v is None else f"{v:+,.1f}"


def valid(r):
    return "no" if r.get("loadgen_saturated") else "yes"


def section(fanout_rows, msg_rows, out):
    """Appends the section; returns the figures ANALYSIS.md works from (or {})."""
    fan, msgs = rounds_of(fanout_rows), rounds_of(msg_rows)
    if not fan and not msgs:
        return {}
    out.append("## Scale-out (issue 17): 1 ingest + 2 edges over NATS, against one process\n")
    out.append(f"`{SINGLE}`: one process (`--role all`) pinned to core 0, as in every other step. `{CLUSTER}`: "
               "nats-server 2.9 with JetStream (`-js -sd`, a fresh store per run) and `--role ingest` on the load "
               "core, fed by the same simulator; `--role edge` a pinned to core 0 and edge b to core 1, which it "
               "shares with the load generator, the simulator, the ingest and nats-server. The clients are split "
               "between the edges (both targets' clients over two load generator processes). On 2 cores these "
               "figures are about cost, not capacity: `edges CPU-s` is both edges' CPU summed (/proc), and "
               "`deliveries/CPU-s` divides by it. The ingest's and nats-server's CPU are read over the same "
               "window. Rounds take turns at going first.\n")
    figures = {}
    if fan:
        figures.update(fanout_part(fanout_rows, fan, out))
    if msgs:
        figures.update(message_part(msg_rows, msgs, out))
    return figures


def fanout_part(rows, rounds, out):
    first = rows[0]
    clients, rate = first["result"].get("clients", 0), first["rate"]
    out.append(f"**Fan-out: {clients:,} clients, 1 product, `matches`, {rate} msg/s.**\n")
    out.append("| round | target | deliveries/s | edges CPU-s | edge a / b CPU-s | deliveries/CPU-s | us/delivery | "
               "p50 ms | p99 ms | ingest CPU-s | nats CPU-s | lost | valid |")
    out.append("|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for i, pair in enumerate(rounds, 1):
        for r, target in zip(pair, (SINGLE, CLUSTER)):
            split = " / ".join(fmt(x, 2) for x in edge_cpus(r)) if target == CLUSTER else "-"
            out.append(f"| {i} | {target} | {fmt(r.get('deliveries_per_s'), 0)} | "
                       f"{fmt(r.get('server_cpu'), 2)} | {split} | {fmt(r.get('per_cpu_s'), 0)} | "
                       f"{fmt(us_per(r.get('server_cpu'), r.get('deliveries')), 2)} | {fmt(r.get('p50_ms'))} | "
                       f"{fmt(r.get('p99_ms'))} | {fmt(side(r, 'ingest'), 2)} | {fmt(side(r, 'nats'), 2)} | "
                       f"{fmt(r.get('lost'))} | {valid(r)} |")
    both = whole(rounds)
    pooled = lambda runs: (sum(r["deliveries"] for r in runs) / sum(r["server_cpu"] for r in runs)
                           if runs and sum(r["server_cpu"] for r in runs) else None)
    singles, clusters = [s for s, _ in both], [c for _, c in both]
    s_cpu, c_cpu = pooled(singles), pooled(clusters)
    out.append("\nThe cluster against one process, by round and over all rounds (all deliveries over all edge "
               "CPU seconds; the mean of each round's latency, the cluster's minus the one process's in the same "
               "round). That latency difference is not the NATS hop's alone: at this size a message's sends queue "
               "behind each other (a burst's last client waits for all the sends before its own), and the cluster "
               "splits each burst between two edges on two cores, which can hide the hop and more. The hop's own "
               "latency is the per-message half's below, with 2 clients and no fan-out queue.\n")
    out.append("| round | deliveries/CPU-s cluster/single | p50 cluster - single, ms | p99 cluster - single, ms |")
    out.append("|---|---:|---:|---:|")
    for i, (s, c) in enumerate(rounds, 1):
        r = c.get("per_cpu_s", 0) / s["per_cpu_s"] if s.get("per_cpu_s") and c.get("per_cpu_s") else None
        out.append(f"| {i} | {'n/a' if r is None else f'{r:.2f}x'} | {signed(hop(c, s, 'p50_ms'))} | "
                   f"{signed(hop(c, s, 'p99_ms'))} |")
    p50 = mean([hop(c, s, "p50_ms") for s, c in both])
    p99 = mean([hop(c, s, "p99_ms") for s, c in both])
    ratio = c_cpu / s_cpu if c_cpu and s_cpu else None
    out.append(f"| all rounds | {'n/a' if ratio is None else f'{ratio:.2f}x'} | {signed(p50)} | {signed(p99)} |\n")
    return {"single_per_cpu_s": s_cpu, "cluster_per_cpu_s": c_cpu, "fanout_p50_added_ms": p50,
            "fanout_p99_added_ms": p99}


def per_message(r):
    """Messages each client saw a second (every client follows every product)."""
    clients = r.get("ready") or r.get("clients")
    return r.get("deliveries", 0) / clients if clients else 0


def message_part(rows, rounds, out):
    first = rows[0]
    rate, subs = first["rate"], first.get("subs", 0)
    out.append(f"**Per message: 2 clients, each following {subs} products at {rate} msg/s each "
               f"({subs * rate:,} msg/s upstream), `matches`.** Each process's CPU over the messages of the "
               "window: for one process an upstream message read and sent to 2 clients; for an edge a NATS "
               "message received and sent to its 1 client; for the ingest an upstream message read and "
               "published; for nats-server a message taken in and sent to 2 edges. `bytes/msg to an edge` is "
               "nats-server's out_bytes over out_msgs to the edges (/connz, since the start: the protocol line, "
               "the headers and the payload).\n")
    out.append("| round | target | msg/s | us/msg: process or edge a / b | ingest us/msg | nats us/msg | "
               "bytes/msg to an edge | p50 ms | p99 ms | lost | valid |")
    out.append("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for i, pair in enumerate(rounds, 1):
        for r, target in zip(pair, (SINGLE, CLUSTER)):
            n = per_message(r)
            each = " / ".join(fmt(us_per(x, n), 1) for x in edge_cpus(r))
            nats = r.get("nats") or {}
            size = nats["edge_bytes"] / nats["edge_msgs"] if nats.get("edge_msgs") else None
            out.append(f"| {i} | {target} | {fmt(n / r['seconds'] if r.get('seconds') else None, 0)} | "
                       f"{each} | {fmt(us_per(side(r, 'ingest'), n), 1)} | {fmt(us_per(side(r, 'nats'), n), 1)} | "
                       f"{fmt(size, 0)} | {fmt(r.get('p50_ms'))} | {fmt(r.get('p99_ms'))} | {fmt(r.get('lost'))} | "
                       f"{valid(r)} |")
    both = whole(rounds)
    total = lambda runs, cpu: us_per(sum(cpu(r) or 0 for r in runs), sum(per_message(r) for r in runs))
    singles, clusters = [s for s, _ in both], [c for _, c in both]
    figures = {
        "single_us_per_msg": total(singles, lambda r: r.get("server_cpu")),
        "edge_us_per_msg": total(clusters, lambda r: r.get("server_cpu")) / 2 if clusters else None,
        "ingest_us_per_msg": total(clusters, lambda r: side(r, "ingest")),
        "nats_us_per_msg": total(clusters, lambda r: side(r, "nats")),
        "msgs_p50_added_ms": mean([hop(c, s, "p50_ms") for s, c in both]),
        "msgs_p99_added_ms": mean([hop(c, s, "p99_ms") for s, c in both]),
    }
    sizes = [c["nats"] for c in clusters if (c.get("nats") or {}).get("edge_msgs")]
    figures["edge_bytes_per_msg"] = (sum(x["edge_bytes"] for x in sizes) / sum(x["edge_msgs"] for x in sizes)
                                     if sizes else None)
    out.append("\nAll rounds (CPU over all rounds' messages; an edge's figure is the mean of the two): one process "
               f"{fmt(figures['single_us_per_msg'])} us per upstream message; an edge "
               f"{fmt(figures['edge_us_per_msg'])} us per NATS message, the ingest {fmt(figures['ingest_us_per_msg'])}, "
               f"nats-server {fmt(figures['nats_us_per_msg'])}; {fmt(figures['edge_bytes_per_msg'], 0)} bytes per "
               f"message to an edge. The latency the NATS hop adds (the cluster's minus the one process's, mean of the "
               f"rounds): p50 {signed(figures['msgs_p50_added_ms'])} ms, p99 {signed(figures['msgs_p99_added_ms'])} ms.\n")
    return figures


def missing(rows):
    """What --check misses of the step: each half's two targets delivering, the cluster's
    edges counted by nats-server."""
    got = {(r["scenario"], r["target"]) for r in rows if r["scenario"] in ("scaleout", "scaleout-msgs")
           and r["result"].get("deliveries", 0) > 0
           and (r["target"] != CLUSTER or (r["result"].get("nats") or {}).get("edges") == 2)}
    return {f"{s} {t}" for s in ("scaleout", "scaleout-msgs") for t in (SINGLE, CLUSTER) if (s, t) not in got}
