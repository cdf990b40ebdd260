//! The process's own figures, under Prometheus' standard `process_` names,
//! read from `/proc/self` at each scrape.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::Exposition;

/// When the relay started (set by [`mark_start`]; else at the first scrape).
static STARTED: OnceLock<f64> = OnceLock::new();

/// Notes the process's start time: call once, early.
pub fn mark_start() {
    STARTED.get_or_init(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()));
}

pub(super) fn write(out: &mut Exposition) {
    mark_start();
    // SAFETY: sysconf reads a configuration value; it has no preconditions.
    let (page, ticks) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::sysconf(libc::_SC_CLK_TCK)) };
    if let Some(pages) = statm_resident() {
        out.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            (pages * page.max(0) as u64) as f64,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.gauge("process_open_fds", "Open file descriptors.", fds.count() as f64);
    }
    if let (Some(t), true) = (cpu_ticks(), ticks > 0) {
        out.counter(
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds.",
            t as f64 / ticks as f64,
        );
    }
    if let Some(start) = STARTED.get() {
        out.gauge("process_start_time_seconds", "Start time of the process since the Unix epoch, in seconds.", *start);
    }
}

fn statm_resident() -> Option<u64> {
    std::fs::read_to_string("/proc/self/statm").ok()?.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime, in clock ticks (fields 14 and 15 of /proc/self/stat, counted
/// after the command name, which may hold spaces).
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_figures_are_read() {
        let mut out = Exposition::default();
        write(&mut out);
        for name in [
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
            "process_start_time_seconds ",
        ] {
            assert!(out.0.contains(name), "{name} in {}", out.0);
        }
    }
}
