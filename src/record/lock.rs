//! One recorder per directory: an exclusive `flock` on `DIR/.hedgehog.lock`,
//! held for the recorder's life. Two relays on one DIR (a shared
//! `HEDGEHOG_RECORD_DIR`) would compress and delete each other's open files.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

/// The lock file's name in DIR (not a recording file: never counted or deleted).
pub const LOCK_FILE: &str = ".hedgehog.lock";

/// The lock, released when dropped or when the process ends, however it ends.
/// The file stays: removing it would race with a relay that has just opened it.
/// It holds the holder's pid, for the next one's error message.
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock without waiting; if another process (or another recorder
    /// in this one) holds it, says so in one line, with its pid when known.
    pub fn take(dir: &Path) -> Result<DirLock, String> {
        let shown = dir.display();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false) // the holder's pid, until the lock is ours
            .open(dir.join(LOCK_FILE))
            .map_err(|e| format!("--record {shown}: cannot create {LOCK_FILE} there: {e}"))?;
        // SAFETY: flock takes plain integers; `file` owns the descriptor throughout.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(match e.kind() {
                io::ErrorKind::WouldBlock => {
                    format!("--record {shown}: {shown} is used by another hedgehog{}", holder(&mut file))
                }
                _ => format!("--record {shown}: cannot lock {LOCK_FILE} there: {e}"),
            });
        }
        // Best effort: the pid only makes the next one's message clearer.
        let _ = file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(DirLock { _file: file })
    }
}

/// ` (pid N)`, from the lock file, or nothing if it does not say (yet).
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    match file.read_to_string(&mut text).ok().and_then(|_| text.trim().parse::<u32>().ok()) {
        Some(pid) => format!(" (pid {pid})"),
        None => String::new(),
    }
}
