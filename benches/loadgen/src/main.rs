//! `loadgen`: the load generator behind bench.sh.
//!
//! - `loadgen clients ...` opens N WebSocket clients against hedgehog, nats-server or
//!   the ceiling, spread over `--procs` processes (the 20,000 open files per process
//!   limit), subscribes them, and measures deliveries, latency (receive time minus the
//!   message's `time`), losses and duplicates. Prints one JSON object.
//!   `--channel matches|ticker` picks the stream (both carry consecutive trade ids);
//!   `--bearer KEY` presents an API key or token to hedgehog (access control on);
//!   `--thinned` counts trade-id gaps as `skipped` rather than `lost`, for a
//!   throttled class, whose tickers are thinned on purpose;
//!   `--ca FILE` speaks wss:// (and https:// for hedgehog's REST subscribes),
//!   trusting the certificates in FILE, and reports the TLS version and suite.
//!   Several servers: `--addr A,B` gives child process i the address i mod 2 (at
//!   least one process per address), `--server-pid P,Q` sums their CPU seconds
//!   (and lists each one's), and `--side-pid NAME:PID,...` reports the CPU seconds
//!   of other processes in the same window (`side_cpu`), e.g. an ingest and NATS.
//! - `loadgen ceiling ...` runs the ceiling program (see ceiling.rs).
//! - `loadgen bridge ...` publishes the simulator's messages into nats-server.
//! - `loadgen client-id ...` holds one hedgehog client and prints its id (for wrk).
//! - `loadgen certs --dir DIR` writes a test CA and a server certificate (certs.rs).

mod bridge;
mod ceiling;
mod certs;
mod clients;
mod parse;
mod stats;
mod tls;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use clients::{Plan, RestPool, Target};
use stats::Stats;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, flags) = match args.split_first() {
        Some((m, rest)) => (m.as_str(), parse_flags(rest)),
        None => ("", HashMap::new()),
    };
    let result = match mode {
        "clients" if flags.contains_key("child") => child(&flags),
        "clients" => parent(&flags),
        "ceiling" => ceiling::run(
            flag(&flags, "listen", "127.0.0.1:9100"),
            num(&flags, "rate", 10.0),
            &list(&flags, "products", "BTC-USD"),
            num(&flags, "hold", 0.0),
        ),
        "bridge" => bridge::run(
            flag(&flags, "sim", "ws://127.0.0.1:8765"),
            flag(&flags, "nats", "127.0.0.1:4222"),
            &list(&flags, "products", "BTC-USD"),
            flag(&flags, "channel", "matches"),
        ),
        "client-id" => client_id(flag(&flags, "addr", "127.0.0.1:8080")),
        "certs" => certs::run(std::path::Path::new(flag(&flags, "dir", "."))),
        _ => Err("usage: loadgen clients|ceiling|bridge|client-id|certs [--flag value ...]".into()),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

type Flags = HashMap<String, String>;

fn parse_flags(args: &[String]) -> Flags {
    let mut out = HashMap::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else { continue };
        let value = match it.peek() {
            Some(v) if !v.starts_with("--") => it.next().cloned().unwrap_or_default(),
            _ => String::new(),
        };
        out.insert(name.to_string(), value);
    }
    out
}

fn flag<'a>(f: &'a Flags, name: &str, default: &'a str) -> &'a str {
    f.get(name).map_or(default, String::as_str)
}

fn num(f: &Flags, name: &str, default: f64) -> f64 {
    f.get(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn list(f: &Flags, name: &str, default: &str) -> Vec<String> {
    flag(f, name, default).split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn addr(f: &Flags, name: &str) -> Result<SocketAddr, String> {
    let v = flag(f, name, "127.0.0.1:8080");
    v.parse().map_err(|_| format!("--{name} {v:?} is not an address"))
}

/// Each client's products: `--subs K` of `--products`, by Zipf popularity (`--zipf S`)
/// when there are more products than subscriptions, deterministically per client.
fn assignments(products: &[String], subs: usize, zipf: f64, clients: usize, offset: usize) -> Vec<Vec<String>> {
    if subs >= products.len() {
        return vec![products.to_vec()];
    }
    let weights: Vec<f64> = (1..=products.len()).map(|k| 1.0 / (k as f64).powf(zipf)).collect();
    let total: f64 = weights.iter().sum();
    (0..clients)
        .map(|i| {
            let mut x = (i + offset) as u64 * 0x9E37_79B9_7F4A_7C15 + 1;
            let mut picked: Vec<String> = Vec::new();
            while picked.len() < subs {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let mut r = (x % 1_000_000) as f64 / 1_000_000.0 * total;
                let k = weights.iter().position(|w| {
                    r -= w;
                    r <= 0.0
                });
                let p = &products[k.unwrap_or(products.len() - 1)];
                if !picked.contains(p) {
                    picked.push(p.clone());
                }
            }
            picked
        })
        .collect()
}

/// One process's share of the clients.
fn child(f: &Flags) -> Result<(), String> {
    let target = match flag(f, "target", "hedgehog") {
        "hedgehog" => Target::Hedgehog,
        "nats" => Target::Nats,
        "ceiling" => Target::Ceiling,
        t => return Err(format!("unknown target {t}")),
    };
    let clients = num(f, "clients", 1.0) as usize;
    let index = num(f, "child", 0.0) as usize;
    let source: Ipv4Addr = flag(f, "source", "127.0.0.1").parse().map_err(|_| "bad --source")?;
    let to = addr(f, "addr")?;
    let tls = match f.get("ca") {
        Some(ca) => Some(tls::Tls::new(std::path::Path::new(ca), to)?),
        None => None,
    };
    let plan = Rc::new(Plan {
        target,
        addr: to,
        rest: if f.contains_key("rest") { addr(f, "rest")? } else { to },
        source,
        subs: assignments(
            &list(f, "products", "BTC-USD"),
            num(f, "subs", 1.0) as usize,
            num(f, "zipf", 1.0),
            clients,
            index * clients,
        ),
        channel: flag(f, "channel", "matches").to_string(),
        kind: clients::kind_of(flag(f, "channel", "matches"))?,
        idle: f.contains_key("idle"),
        bearer: f.get("bearer").filter(|b| !b.is_empty()).cloned(),
        thinned: f.contains_key("thinned"),
        tls,
    });
    let (warmup, duration) = (num(f, "warmup", 2.0), num(f, "duration", 5.0));
    let ready_timeout = num(f, "ready-timeout", 60.0);
    let hist_out = flag(f, "hist-out", "").to_string();
    // A watchdog: whatever happens, this process ends (the run is bounded in time).
    let limit = Duration::from_secs_f64(ready_timeout + warmup + duration + 60.0);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("loadgen: child gave up after {limit:?}");
        std::process::exit(3);
    });
    let go = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let go_reader = go.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        go_reader.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(hedgehog::IO_MEMORY)
        .make()
        .map_err(|e| e.to_string())?;
    ex.run(async move {
        let stats = Rc::new(RefCell::new(Stats::new()));
        let rest = Rc::new(RestPool::new(plan.rest, plan.source, 32, plan.bearer.as_deref(), plan.tls.clone()));
        let started = Instant::now();
        for i in 0..clients {
            glommio::spawn_local(clients::client(i, plan.clone(), stats.clone(), rest.clone())).detach();
            if i % 64 == 63 {
                futures_lite::future::yield_now().await;
            }
        }
        while {
            let s = stats.borrow();
            (s.ready + s.errors) < clients as u64 && started.elapsed().as_secs_f64() < ready_timeout
        } {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let ready_seconds = started.elapsed().as_secs_f64();
        {
            let s = stats.borrow();
            println!("ready {ready_seconds:.4} {} {}", s.ready, s.errors);
        }
        let _ = std::io::stdout().flush();
        while !go.load(std::sync::atomic::Ordering::SeqCst) {
            glommio::timer::sleep(Duration::from_millis(2)).await;
        }
        glommio::timer::sleep(Duration::from_secs_f64(warmup)).await;
        let me = std::process::id();
        let cpu0 = stats::cpu_seconds(me);
        stats.borrow_mut().measuring = true;
        let t0 = Instant::now();
        glommio::timer::sleep(Duration::from_secs_f64(duration)).await;
        let s = {
            let mut s = stats.borrow_mut();
            s.measuring = false;
            std::mem::replace(&mut *s, Stats::new())
        };
        let seconds = t0.elapsed().as_secs_f64();
        let own_cpu = stats::cpu_seconds(me) - cpu0;
        if !hist_out.is_empty() {
            let mut buf = Vec::new();
            let _ = hdrhistogram::serialization::Serializer::serialize(
                &mut hdrhistogram::serialization::V2Serializer::new(),
                &s.hist,
                &mut buf,
            );
            let _ = std::fs::write(&hist_out, buf);
        }
        let v = serde_json::json!({
            "clients": clients, "connected": s.connected, "ready": s.ready, "errors": s.errors,
            "first_error": s.first_error, "tls": s.tls, "deliveries": s.deliveries, "lost": s.lost, "skipped": s.skipped, "dups": s.dups,
            "seconds": seconds, "own_cpu": own_cpu, "saturated": own_cpu / seconds.max(0.001) > 0.9,
            "ready_seconds": ready_seconds,
        });
        println!("{v}");
        let _ = std::io::stdout().flush();
        std::process::exit(0);
    });
    Ok(())
}

/// Splits the clients over processes, runs the measurement window, merges.
fn parent(f: &Flags) -> Result<(), String> {
    let clients = num(f, "clients", 1.0) as usize;
    let procs = (num(f, "procs", 0.0) as usize).max(clients.div_ceil(9000)).max(1);
    let addrs = list(f, "addr", "127.0.0.1:8080");
    let procs = procs.max(addrs.len());
    let server_pids: Vec<u32> = list(f, "server-pid", "0").iter().filter_map(|p| p.parse().ok()).collect();
    let sides = side_pids(f)?;
    let base: Vec<u8> = flag(f, "source", "127.0.1").split('.').filter_map(|p| p.parse().ok()).collect();
    if base.len() != 3 {
        return Err("--source takes the first three octets, e.g. 127.0.5".into());
    }
    let (warmup, duration) = (num(f, "warmup", 2.0), num(f, "duration", 5.0));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let rss0: u64 = server_pids.iter().map(|&p| stats::rss_kib(p)).sum();
    let dir = std::env::temp_dir();
    let mut children = Vec::new();
    for i in 0..procs {
        let n = clients / procs + usize::from(i < clients % procs);
        let hist = dir.join(format!("loadgen-{}-{i}.hist", std::process::id()));
        let mut cmd = Command::new(&exe);
        cmd.arg("clients").arg("--child").arg("--child").arg(i.to_string());
        for (k, v) in f {
            if !["clients", "source", "procs", "child", "hist-out", "addr"].contains(&k.as_str()) {
                cmd.arg(format!("--{k}"));
                if !v.is_empty() {
                    cmd.arg(v);
                }
            }
        }
        cmd.args(["--clients", &n.to_string(), "--source", &format!("{}.{}.{}.{}", base[0], base[1], base[2], i + 1)]);
        cmd.args(["--hist-out", &hist.display().to_string(), "--addr", &addrs[i % addrs.len()]]);
        let mut c = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().map_err(|e| e.to_string())?;
        let out = BufReader::new(c.stdout.take().expect("piped"));
        children.push((c, out, hist));
    }
    let mut ready_seconds: f64 = 0.0;
    let (mut ready, mut errors) = (0u64, 0u64);
    for (_, out, _) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.first() != Some(&"ready") {
            return Err(format!("a child failed to start: {line}"));
        }
        ready_seconds = ready_seconds.max(parts[1].parse().unwrap_or(0.0));
        ready += parts[2].parse::<u64>().unwrap_or(0);
        errors += parts[3].parse::<u64>().unwrap_or(0);
    }
    let rss1: u64 = server_pids.iter().map(|&p| stats::rss_kib(p)).sum();
    for (c, _, _) in &mut children {
        let _ = c.stdin.as_mut().expect("piped").write_all(b"go\n");
    }
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let core = f.get("server-core").and_then(|c| c.parse::<usize>().ok());
    let busy = || core.map_or(0.0, stats::core_busy_seconds);
    let cpus = |pids: &[u32]| pids.iter().map(|&p| stats::cpu_seconds(p)).collect::<Vec<f64>>();
    let side: Vec<u32> = sides.iter().map(|(_, p)| *p).collect();
    let (cpu0, side0, core0) = (cpus(&server_pids), cpus(&side), busy());
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(duration));
    let server_cpus: Vec<f64> = cpus(&server_pids).iter().zip(&cpu0).map(|(b, a)| b - a).collect();
    let side_cpu: serde_json::Map<String, serde_json::Value> =
        sides.iter().zip(cpus(&side).iter().zip(&side0)).map(|((n, _), (b, a))| (n.clone(), (b - a).into())).collect();
    let server_cpu: f64 = server_cpus.iter().sum();
    let core_cpu = busy() - core0;
    let window = t0.elapsed().as_secs_f64();
    let mut hist = stats::histogram();
    let mut total = serde_json::Map::new();
    let (mut deliveries, mut lost, mut skipped, mut dups) = (0u64, 0u64, 0u64, 0u64);
    let (mut saturated, mut first_error, mut negotiated) = (false, None, None);
    for (mut c, mut out, path) in children {
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let _ = c.wait();
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| format!("child output {line:?}: {e}"))?;
        deliveries += v["deliveries"].as_u64().unwrap_or(0);
        lost += v["lost"].as_u64().unwrap_or(0);
        skipped += v["skipped"].as_u64().unwrap_or(0);
        dups += v["dups"].as_u64().unwrap_or(0);
        errors = errors.max(v["errors"].as_u64().unwrap_or(0));
        saturated |= v["saturated"].as_bool().unwrap_or(false);
        if first_error.is_none() && !v["first_error"].is_null() {
            first_error = Some(v["first_error"].clone());
        }
        if negotiated.is_none() && !v["tls"].is_null() {
            negotiated = Some(v["tls"].clone());
        }
        if let Ok(bytes) = std::fs::read(&path) {
            if let Ok(h) = hdrhistogram::serialization::Deserializer::new().deserialize::<u64, _>(&mut &bytes[..]) {
                let _ = hist.add(&h);
            }
            let _ = std::fs::remove_file(&path);
        }
    }
    let q = |p: f64| if hist.is_empty() { 0.0 } else { hist.value_at_quantile(p) as f64 / 1000.0 };
    for (k, v) in [
        ("clients", serde_json::json!(clients)),
        ("procs", procs.into()),
        ("ready", ready.into()),
        ("errors", errors.into()),
        ("first_error", first_error.unwrap_or_default()),
        ("tls", negotiated.unwrap_or_default()),
        ("ready_seconds", ready_seconds.into()),
        ("seconds", window.into()),
        ("deliveries", deliveries.into()),
        ("deliveries_per_s", (deliveries as f64 / window).into()),
        ("lost", lost.into()),
        ("skipped", skipped.into()),
        ("dups", dups.into()),
        ("server_cpu", server_cpu.into()),
        ("server_cpus", server_cpus.into()),
        ("side_cpu", side_cpu.into()),
        ("core_cpu", core_cpu.into()),
        ("per_cpu_s", (if server_cpu > 0.0 { deliveries as f64 / server_cpu } else { 0.0 }).into()),
        ("per_core_s", (if core_cpu > 0.0 { deliveries as f64 / core_cpu } else { 0.0 }).into()),
        ("p50_ms", q(0.5).into()),
        ("p99_ms", q(0.99).into()),
        ("p999_ms", q(0.999).into()),
        ("max_ms", (hist.max() as f64 / 1000.0).into()),
        ("rss_before_kib", rss0.into()),
        ("rss_after_kib", rss1.into()),
        ("loadgen_saturated", saturated.into()),
    ] {
        total.insert(k.to_string(), v);
    }
    println!("{}", serde_json::Value::Object(total));
    Ok(())
}

/// `--side-pid NAME:PID,...`: other processes whose CPU seconds the window reports.
fn side_pids(f: &Flags) -> Result<Vec<(String, u32)>, String> {
    let parse = |s: &String| {
        let (name, pid) = s.split_once(':')?;
        Some((name.to_string(), pid.parse().ok()?))
    };
    list(f, "side-pid", "").iter().map(|s| parse(s).ok_or(format!("--side-pid {s:?}: use NAME:PID"))).collect()
}

/// Holds one hedgehog WebSocket client and prints its id, for wrk's scripts.
fn client_id(addr: &str) -> Result<(), String> {
    let stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let (mut ws, _) = tungstenite::client(format!("ws://{addr}/ws"), stream).map_err(|e| e.to_string())?;
    let welcome = ws.read().map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(welcome.to_text().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    println!("{}", v["client_id"].as_str().unwrap_or(""));
    let _ = std::io::stdout().flush();
    while ws.read().is_ok() {}
    Ok(())
}
