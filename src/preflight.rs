//! Start-up checks of what glommio needs from the system, made before any
//! executor starts, so that a refusal is one line naming its fix (exit 2)
//! instead of an executor's error, or a warning glommio prints over several.
//!
//! What glommio 0.9 needs, read in its `sys/uring.rs` (`Reactor::new`) and
//! measured on kernel 6.18 as an unprivileged user (`setpriv` without
//! `CAP_IPC_LOCK`, `prlimit --memlock`):
//! - io_uring itself: a seccomp profile (Docker's default) or
//!   `kernel.io_uring_disabled` refuses `io_uring_setup` with EPERM or ENOSYS.
//! - `RLIMIT_MEMLOCK` of at least 512 KiB: below it every executor refuses to
//!   start (`MemLockLimit`), whatever the process's privileges.
//! - Each executor then registers its [`crate::IO_MEMORY`] (256 KiB) with each of
//!   its three rings, which the kernel counts against the limit per user: 832 KiB
//!   an executor sufficed, 800 KiB did not. With less, glommio warns and runs
//!   without registered buffers, which costs hedgehog nothing (it does no file I/O
//!   through them); a process with `CAP_IPC_LOCK` is not counted at all.

use std::io;

/// Below this, glommio refuses to create an executor (`MIN_MEMLOCK_LIMIT`).
pub const GLOMMIO_MEMLOCK_FLOOR: u64 = 512 * 1024;

/// Locked memory to allow each executor so that its buffers register: the 832
/// KiB measured, rounded up.
pub const MEMLOCK_PER_EXECUTOR: u64 = 1024 * 1024;

/// How to raise the locked-memory limit, wherever hedgehog runs.
const MEMLOCK_FIX: &str =
    "raise it: `ulimit -l` in a shell, `LimitMEMLOCK=` in a systemd unit, `--ulimit memlock=` for docker (README: Deploying)";

/// What the system said when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// `io_uring_setup` of a one-entry ring: `Ok`, or its errno.
    pub io_uring: Result<(), i32>,
    /// The soft `RLIMIT_MEMLOCK`, bytes; `None` for unlimited.
    pub memlock: Option<u64>,
    /// Whether this process has `CAP_IPC_LOCK` (locked memory is then not counted).
    pub ipc_lock: bool,
}

/// Checks this system for `executors` glommio executors: `Err` is the one line to
/// exit with (status 2); a warning worth a log line is logged.
pub fn check(executors: usize) -> Result<(), String> {
    let warning = verdict(&Probe::system(), executors)?;
    if let Some(warning) = warning {
        log::warn!(event = "memlock_low"; "{warning}");
    }
    Ok(())
}

/// What `probe` means for `executors` executors: `Err` ends start-up, `Ok(Some)`
/// is a warning, `Ok(None)` all is well.
pub fn verdict(probe: &Probe, executors: usize) -> Result<Option<String>, String> {
    match probe.io_uring {
        // Kernels before 5.12 count the ring itself against the limit.
        Err(libc::ENOMEM) => {
            return Err(format!("io_uring_setup ran out of locked memory (RLIMIT_MEMLOCK): {MEMLOCK_FIX}"))
        }
        Err(errno) => return Err(io_uring_refused(errno)),
        Ok(()) => {}
    }
    let Some(limit) = probe.memlock else { return Ok(None) };
    if limit < GLOMMIO_MEMLOCK_FLOOR {
        return Err(format!(
            "the locked-memory limit (RLIMIT_MEMLOCK) is {} KiB, below the {} KiB glommio needs to start an executor: {MEMLOCK_FIX}",
            limit / 1024,
            GLOMMIO_MEMLOCK_FLOOR / 1024
        ));
    }
    let wanted = MEMLOCK_PER_EXECUTOR * executors as u64;
    if limit < wanted && !probe.ipc_lock {
        return Ok(Some(format!(
            "the locked-memory limit is {} KiB, below the {} KiB that {executors} executor(s) need to register \
             their io_uring buffers: glommio will warn and run without them (harmless for hedgehog); to silence it, {MEMLOCK_FIX}",
            limit / 1024,
            wanted / 1024
        )));
    }
    Ok(None)
}

/// The line for an `io_uring_setup` refused with `errno`.
fn io_uring_refused(errno: i32) -> String {
    let why = io::Error::from_raw_os_error(errno);
    format!(
        "io_uring is refused by this system ({why}; a seccomp profile, or kernel.io_uring_disabled): \
         for a container use --security-opt seccomp=deploy/seccomp-io-uring.json, for systemd allow \
         io_uring_setup, io_uring_enter and io_uring_register in SystemCallFilter= (README: Deploying)"
    )
}

/// The one line for an executor that could not be created although the checks
/// passed (`what` names it): glommio's error, with the fix when it is one of ours.
pub fn executor_failed(what: &str, error: &dyn std::fmt::Display) -> String {
    let text = error.to_string().replace('\n', " ");
    if text.contains("MemLockLimit") || text.contains("Cannot allocate memory") {
        format!("cannot start {what}: {text}: the locked-memory limit is too small; {MEMLOCK_FIX}")
    } else if text.contains("Operation not permitted") || text.contains("Function not implemented") {
        format!("cannot start {what}: {text}: {}", io_uring_refused(libc::EPERM))
    } else {
        format!("cannot start {what}: {text}")
    }
}

impl Probe {
    /// Asks this system.
    pub fn system() -> Probe {
        Probe { io_uring: probe_io_uring(), memlock: memlock_limit(), ipc_lock: has_ipc_lock() }
    }
}

/// Creates a one-entry io_uring and closes it.
fn probe_io_uring() -> Result<(), i32> {
    // struct io_uring_params is 120 bytes; zeroed asks for nothing special.
    let mut params = [0u32; 30];
    // SAFETY: io_uring_setup writes at most sizeof(struct io_uring_params) into
    // `params`, which is that size; the fd it returns is ours to close.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::ENOSYS));
    }
    // SAFETY: `fd` was just returned to us and nothing else holds it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

/// The soft `RLIMIT_MEMLOCK`; `None` if unlimited or unknown.
fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into `limit`.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Whether `CAP_IPC_LOCK` (capability 14) is in this process's effective set.
fn has_ipc_lock() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim);
    effective.and_then(|hex| u64::from_str_radix(hex, 16).ok()).is_some_and(|caps| caps & (1 << 14) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn probe(memlock: Option<u64>, ipc_lock: bool) -> Probe {
        Probe { io_uring: Ok(()), memlock, ipc_lock }
    }

    #[test]
    fn io_uring_refused_is_one_line_naming_the_seccomp_profile() {
        for errno in [libc::EPERM, libc::ENOSYS, libc::EACCES] {
            let p = Probe { io_uring: Err(errno), ..probe(None, true) };
            let line = verdict(&p, 1).unwrap_err();
            assert!(line.starts_with("io_uring is refused by this system ("), "{line}");
            assert!(line.contains("--security-opt seccomp=deploy/seccomp-io-uring.json"), "{line}");
            assert!(line.contains("SystemCallFilter="), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn a_ring_without_locked_memory_names_the_memlock_fix() {
        let p = Probe { io_uring: Err(libc::ENOMEM), ..probe(Some(64 * KIB), false) };
        let line = verdict(&p, 1).unwrap_err();
        assert!(
            line.starts_with("io_uring_setup ran out of locked memory") && line.contains("LimitMEMLOCK="),
            "{line}"
        );
    }

    #[test]
    fn below_glommios_floor_is_an_error_naming_the_fixes() {
        let line = verdict(&probe(Some(256 * KIB), true), 1).unwrap_err();
        assert!(line.contains("is 256 KiB, below the 512 KiB"), "{line}");
        for fix in ["ulimit -l", "LimitMEMLOCK=", "--ulimit memlock="] {
            assert!(line.contains(fix), "{line}");
        }
    }

    #[test]
    fn below_what_buffers_need_is_a_warning_unless_not_counted() {
        let warning = verdict(&probe(Some(1024 * KIB), false), 2).unwrap().unwrap();
        assert!(warning.contains("below the 2048 KiB that 2 executor(s)"), "{warning}");
        assert_eq!(verdict(&probe(Some(1024 * KIB), true), 2), Ok(None), "CAP_IPC_LOCK: not counted");
        assert_eq!(verdict(&probe(Some(2048 * KIB), false), 2), Ok(None));
        assert_eq!(verdict(&probe(None, false), 64), Ok(None), "unlimited");
    }

    #[test]
    fn executor_errors_get_their_fix() {
        let memlock = executor_failed("shard 0", &"IO error occurred: MemLockLimit(393216/524288)");
        assert!(memlock.starts_with("cannot start shard 0: IO error occurred: MemLockLimit"), "{memlock}");
        assert!(memlock.contains("LimitMEMLOCK="), "{memlock}");
        let uring = executor_failed("shard 1", &"Operation not permitted (os error 1)");
        assert!(uring.contains("io_uring is refused"), "{uring}");
        assert_eq!(executor_failed("shard 2", &"odd"), "cannot start shard 2: odd");
    }

    #[test]
    fn this_system_allows_io_uring() {
        assert_eq!(probe_io_uring(), Ok(()), "the test machine runs glommio, so io_uring works here");
    }
}
