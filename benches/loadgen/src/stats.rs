//! What a load generator process measures, and the /proc readings around it.

use std::collections::HashMap;

use hdrhistogram::Histogram;

/// Latency is recorded in microseconds, from 1 us to 10 minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Counters of one process.
pub struct Stats {
    pub hist: Histogram<u64>,
    pub deliveries: u64,
    pub lost: u64,
    /// Trade ids a thinned stream passed over on purpose (`--thinned`).
    pub skipped: u64,
    pub dups: u64,
    pub connected: u64,
    pub ready: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The TLS version and suite the first client negotiated (`--ca`), if any.
    pub tls: Option<String>,
    pub measuring: bool,
    /// Product name -> small index, shared by all clients of the process.
    pub products: HashMap<String, u16>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            hist: histogram(),
            deliveries: 0,
            lost: 0,
            skipped: 0,
            dups: 0,
            connected: 0,
            ready: 0,
            errors: 0,
            first_error: None,
            tls: None,
            measuring: false,
            products: HashMap::new(),
        }
    }

    pub fn error(&mut self, e: impl Into<String>) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.into());
        }
    }

    pub fn product_index(&mut self, p: &str) -> u16 {
        let n = self.products.len() as u16;
        *self.products.entry(p.to_string()).or_insert(n)
    }
}

/// CPU seconds (user + system) a process has used; 0 if it cannot be read.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0.0 };
    // Fields after the command name (which may hold spaces) start after ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Resident memory of a process in KiB, from smaps_rollup; 0 if unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else { return 0 };
    text.lines()
        .find_map(|l| l.strip_prefix("Rss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Busy seconds of one CPU (everything but idle and iowait), from /proc/stat: it
/// catches kernel work done for a pinned server outside its own accounting
/// (softirq run by ksoftirqd, for one).
pub fn core_busy_seconds(core: usize) -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else { return 0.0 };
    let name = format!("cpu{core} ");
    let Some(line) = text.lines().find(|l| l.starts_with(&name)) else { return 0.0 };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let busy: f64 = v.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| x).sum();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / hz.max(1.0)
}
