//! Recording files: their names, and the compressor thread, which gzips the
//! files the writer has closed and keeps the directory's total within
//! `--record-max-bytes`, oldest deleted first.
//!
//! Only this thread compresses or deletes, and only hedgehog's own files:
//! exactly the names [`file_name`] makes (`hedgehog-20261130T120000.123456Z.log`),
//! `.log.gz`, and `.log.gz.tmp` while one is being compressed; anything else in
//! DIR, however it is named, is left alone. Never the file the writer has open,
//! which the writer names here before it creates it.

use std::cell::Cell;
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use flate2::write::GzEncoder;
use flate2::Compression;

use super::{RecordConfig, Stats};

pub const PREFIX: &str = "hedgehog-";
pub const LOG_SUFFIX: &str = ".log";
pub const GZ_SUFFIX: &str = ".log.gz";
const TMP_SUFFIX: &str = ".log.gz.tmp";

/// `hedgehog-20261130T120000.123456Z.log`: the file's start time in UTC, fixed
/// width, so that names sort by age.
pub fn file_name(micros: i64) -> String {
    let iso = crate::clock::format_iso(micros);
    let compact: String = iso.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    format!("{PREFIX}{compact}{LOG_SUFFIX}")
}

/// Whether `name` is one of hedgehog's files with one of `suffixes`: the
/// prefix, a start time exactly as [`file_name`] writes it, the suffix.
fn is_ours(name: &str, suffixes: &[&str]) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else { return false };
    suffixes.iter().filter_map(|s| rest.strip_suffix(s)).any(is_start_time)
}

/// `20261130T120000.123456Z` (`0` in the shape: any digit).
fn is_start_time(s: &str) -> bool {
    const SHAPE: &[u8] = b"00000000T000000.000000Z";
    s.len() == SHAPE.len() && s.bytes().zip(SHAPE).all(|(c, &p)| if p == b'0' { c.is_ascii_digit() } else { c == p })
}

/// The writer's side: names the file it opens, and asks for a pass once it has
/// closed one.
pub(super) struct Pass {
    tx: Sender<()>,
    open: Arc<Mutex<Option<String>>>,
}

impl Pass {
    /// Called before the file is created, so a pass never takes it.
    pub fn opening(&self, name: &str) {
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(name.to_string());
    }

    /// A file was closed (and `opening` not called since, or it is kept open
    /// for a stop: the last file of a run stays uncompressed, for a fast stop).
    pub fn closed(&self, keep: bool) {
        if !keep {
            *self.open.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        // Capacity 1: when full, a pass is already due, and it will see this file too.
        let _ = self.tx.try_send(());
    }
}

pub(super) struct Compressor {
    dir: PathBuf,
    max_file_bytes: u64,
    max_bytes: u64,
    stats: Arc<Stats>,
    rx: Receiver<()>,
    open: Arc<Mutex<Option<String>>>,
    /// In a run of errors: only the first is logged.
    failing: Cell<bool>,
    /// An error in this pass.
    failed: Cell<bool>,
}

impl Compressor {
    pub fn new(cfg: &RecordConfig, stats: Arc<Stats>) -> (Compressor, Pass) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let open = Arc::new(Mutex::new(None));
        let compressor = Compressor {
            dir: cfg.dir.clone(),
            max_file_bytes: cfg.max_file_bytes,
            max_bytes: cfg.max_bytes,
            stats,
            rx,
            open: open.clone(),
            failing: Cell::new(false),
            failed: Cell::new(false),
        };
        (compressor, Pass { tx, open })
    }

    /// Passes at start (files a previous run left uncompressed), after each
    /// rotation, and once more when the writer has ended.
    pub fn run(self) {
        lower_priority();
        self.remove_partial();
        loop {
            self.pass();
            loop {
                match self.rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(()) => break,
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return self.pass(),
                }
            }
        }
    }

    /// Compresses every closed `.log` file, then deletes the oldest files until
    /// the closed ones total at most `max_bytes - max_file_bytes` (the open file
    /// grows to at most `max_file_bytes`, so the total stays within `max_bytes`).
    fn pass(&self) {
        self.failed.set(false);
        self.pass_once();
        if !self.failed.get() {
            self.failing.set(false);
        }
    }

    fn pass_once(&self) {
        let (files, open) = self.list_with_open();
        for (name, _) in files {
            if name.ends_with(LOG_SUFFIX) && Some(&name) != open.as_ref() {
                if let Err(e) = compress(&self.dir.join(&name)) {
                    self.fail(format!("cannot compress {name}: {e}"));
                }
            }
        }
        let (files, open) = self.list_with_open();
        let open_bytes: u64 = files.iter().filter(|(n, _)| Some(n) == open.as_ref()).map(|f| f.1).sum();
        let mut closed: u64 = files.iter().map(|f| f.1).sum::<u64>() - open_bytes;
        let budget = self.max_bytes.saturating_sub(self.max_file_bytes);
        for (name, size) in files.iter().filter(|(n, _)| Some(n) != open.as_ref()) {
            if closed <= budget {
                break;
            }
            match fs::remove_file(self.dir.join(name)) {
                Ok(()) => closed -= size,
                Err(e) if e.kind() == io::ErrorKind::NotFound => closed -= size,
                Err(e) => self.fail(format!("cannot delete {name}: {e}")),
            }
        }
        self.stats.set_closed_bytes(closed);
    }

    /// The files, and the one the writer has open. Asked in this order: a file
    /// listed was created after the writer named it (see [`Pass::opening`]), so
    /// it is either the one named now or one already closed (a name is never
    /// opened twice). Asked the other way round, a file opened in between would
    /// be taken for a closed one and compressed under the writer.
    fn list_with_open(&self) -> (Vec<(String, u64)>, Option<String>) {
        let files = self.list();
        (files, self.open.lock().map(|o| o.clone()).unwrap_or_default())
    }

    /// hedgehog's `.log` and `.log.gz` files in the directory (see [`is_ours`]), oldest first, with their sizes.
    fn list(&self) -> Vec<(String, u64)> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                self.fail(format!("cannot list {}: {e}", self.dir.display()));
                return Vec::new();
            }
        };
        let mut files: Vec<(String, u64)> = entries
            .filter_map(|e| {
                let e = e.ok()?;
                let name = e.file_name().into_string().ok()?;
                if !is_ours(&name, &[LOG_SUFFIX, GZ_SUFFIX]) {
                    return None;
                }
                Some((name, e.metadata().ok()?.len()))
            })
            .collect();
        files.sort();
        files
    }

    /// Removes what a compression cut short (a stop that did not wait for it) left.
    fn remove_partial(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_ours(&name, &[TMP_SUFFIX]) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    fn fail(&self, what: String) {
        self.failed.set(true);
        if !self.failing.replace(true) {
            log::warn!(event = "record_error"; "record: {what}");
        }
        self.stats.error(what);
    }
}

/// `X.log` -> `X.log.gz` (through `X.log.gz.tmp`, renamed once complete), then
/// `X.log` is removed. A file deleted meanwhile is not an error.
fn compress(log: &Path) -> io::Result<()> {
    let mut input = match File::open(log) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let name = log.as_os_str().to_string_lossy();
    let (gz, tmp) = (PathBuf::from(format!("{name}.gz")), PathBuf::from(format!("{name}.gz.tmp")));
    let written = (|| {
        let mut out = GzEncoder::new(BufWriter::new(File::create(&tmp)?), Compression::default());
        io::copy(&mut input, &mut out)?;
        out.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, &gz)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    fs::remove_file(log)
}

/// Compression is background work: it yields the CPU to the shards. (On
/// Linux a thread has its own nice value; `who = 0` is the calling thread.)
fn lower_priority() {
    // SAFETY: setpriority takes plain integers and changes nothing but a priority.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, 0, 19) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_start_time() {
        assert_eq!(file_name(1_618_677_817_056_746), "hedgehog-20210417T164337.056746Z.log");
        let names: Vec<String> =
            [1, 999_999, 1_000_000, 86_400_000_000, 1_618_677_817_056_746].iter().map(|&t| file_name(t)).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn only_the_names_hedgehog_makes_are_its_own() {
        for t in [0, 1, 1_618_677_817_056_746, 253_402_300_799_999_999] {
            let log = file_name(t);
            assert!(is_ours(&log, &[LOG_SUFFIX]), "{log}");
            assert!(is_ours(&format!("{log}.gz"), &[LOG_SUFFIX, GZ_SUFFIX]), "{log}.gz");
            assert!(is_ours(&format!("{log}.gz.tmp"), &[TMP_SUFFIX]), "{log}.gz.tmp");
            assert!(!is_ours(&format!("{log}.gz.tmp"), &[LOG_SUFFIX, GZ_SUFFIX]), "{log}.gz.tmp");
        }
        let theirs = [
            "hedgehog-2024-backup.log",
            "hedgehog-notes.log",
            "hedgehog-stderr.log",
            "hedgehog-.log",
            "hedgehog-20261130T120000Z.log",
            "hedgehog-20261130T120000.123456.log",
            "hedgehog-20261130T120000.1234567Z.log",
            "hedgehog-20261130t120000.123456Z.log",
            "hedgehog-2026113OT120000.123456Z.log",
            "hedgehog-20261130T120000.123456Z.log.1",
            "hedgehog-20261130T120000.123456Z.gz",
            "hedgehog-20261130T120000.123456Z-copy.log",
            "my-hedgehog-20261130T120000.123456Z.log",
            "HEDGEHOG-20261130T120000.123456Z.log",
            "hedgehog-٢0261130T120000.123456Z.log",
        ];
        for name in theirs {
            assert!(!is_ours(name, &[LOG_SUFFIX, GZ_SUFFIX, TMP_SUFFIX]), "{name}");
        }
    }

    #[test]
    fn compresses_and_removes_the_original() {
        let dir = std::env::temp_dir().join(format!("hedgehog-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join(file_name(0));
        fs::write(&log, b"1.000000: {\"type\":\"x\"}\n").unwrap();
        compress(&log).unwrap();
        assert!(!log.exists());
        let mut text = String::new();
        let gz = File::open(dir.join(format!("{}{GZ_SUFFIX}", file_name(0).trim_end_matches(LOG_SUFFIX)))).unwrap();
        io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).unwrap();
        assert_eq!(text, "1.000000: {\"type\":\"x\"}\n");
        fs::remove_dir_all(&dir).unwrap();
    }
}
