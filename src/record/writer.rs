//! The writer thread: takes messages off the queue and writes them as lines
//! into the current file; rotates at each UTC hour and before a file would pass
//! `max_file_bytes`; writes the notes of holes; lives through disk errors.
//!
//! Lines are buffered ([`OpenFile`]) and flushed every second, when the buffer
//! passes [`BUFFER`], at each rotation and at the stop (which also syncs the
//! file to disk). A message counts as written once a flush has put it in the
//! file and found the file still in DIR. A disk error (full, file or directory
//! removed) ends the file: the messages buffered since its last good flush are
//! lost, a file that nothing reached is removed, and a new one is tried at most
//! every `retry_every` (10 s); its first line notes what was lost. A run of
//! errors is logged once, at its first error, and its end once a flush has
//! written again.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::files::{file_name, Pass};
use super::open::OpenFile;
use super::{DiskFull, Entry, Hold, Hole, RecordConfig, Stats};

/// How often buffered lines reach the file.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the thread looks at the clock and the stop flag when idle.
const TICK: Duration = Duration::from_millis(100);
/// Messages written in a row before the clock is looked at again.
const BATCH: usize = 1024;
/// The buffer in front of each file: flushed once it holds this much.
const BUFFER: usize = 64 * 1024;

pub(super) struct Writer {
    dir: PathBuf,
    max_file_bytes: u64,
    retry_every: Duration,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    hold: Option<Hold>,
    disk_full: Option<DiskFull>,
    pass: Pass,
    file: Option<OpenFile>,
    /// The newest file's start time: the next file's name is later.
    last_start: i64,
    /// Messages lost to disk errors and not yet noted in a file.
    lost: Option<Hole>,
    /// After a disk error: no new file before this.
    retry_at: Option<Instant>,
    /// In a run of errors: only the first is logged.
    failing: bool,
    /// The line being written (reused).
    line: Vec<u8>,
}

fn hour(micros: i64) -> i64 {
    micros.div_euclid(3_600_000_000)
}

/// `1733011200.123456`: a recording's time format.
pub fn format_time(micros: i64) -> String {
    format!("{}.{:06}", micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000))
}

impl Writer {
    pub fn new(cfg: &RecordConfig, stats: Arc<Stats>, stop: Arc<AtomicBool>, pass: Pass) -> Writer {
        Writer {
            dir: cfg.dir.clone(),
            max_file_bytes: cfg.max_file_bytes,
            retry_every: cfg.retry_every,
            stats,
            stop,
            hold: cfg.hold.clone(),
            disk_full: cfg.disk_full.clone(),
            pass,
            file: None,
            last_start: i64::MIN,
            lost: None,
            retry_at: None,
            failing: false,
            line: Vec::with_capacity(4096),
        }
    }

    /// Opens the first file, on the caller's thread: the start fails if it cannot.
    pub fn open_first(&mut self) -> io::Result<()> {
        self.open()
    }

    /// Until stopped, or until shard 0's end of the queue is gone; then writes
    /// what is still queued, flushes, syncs and closes.
    pub fn run(mut self, rx: Receiver<Entry>) {
        loop {
            match rx.recv_timeout(TICK) {
                Ok(entry) => {
                    if let Some(hold) = &self.hold {
                        hold.pass(&self.stop);
                    }
                    self.take(entry);
                    for entry in rx.try_iter().take(BATCH) {
                        self.take(entry);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            self.tick();
        }
        // What was queued before the stop (not more: the queue may still be fed).
        for entry in rx.try_iter().take(rx.len()) {
            self.take(entry);
        }
        self.close(true);
    }

    /// Writes one message (after the note of the hole before it, if any).
    fn take(&mut self, e: Entry) {
        if let Some(h) = e.hole {
            let (n, from, to) = (h.count, format_time(h.from), format_time(h.to));
            self.note(e.at, &format!("{n} messages dropped from the recording (queue full) between {from} and {to}"));
        }
        let Some(frame) = &e.frame else { return };
        let payload = frame.get(e.start..).unwrap_or_default();
        self.stats.dequeued(payload.len());
        if payload.iter().any(|&b| b == b'\n' || b == b'\r') {
            let (n, at) = (payload.len(), format_time(e.at));
            return self.note(e.at, &format!("a message of {n} bytes at {at} left out: it holds a line break"));
        }
        self.line.clear();
        self.line.extend_from_slice(format_time(e.at).as_bytes());
        self.line.extend_from_slice(b": ");
        self.line.extend_from_slice(payload);
        self.line.push(b'\n');
        self.emit(e.at, 1);
    }

    /// A `#` line: hedgehog's note, not a message.
    fn note(&mut self, at: i64, text: &str) {
        self.line.clear();
        self.line.extend_from_slice(format!("# hedgehog: {text}\n").as_bytes());
        self.emit(at, 0);
    }

    /// Buffers `self.line` (holding `messages` messages), rotating first if due.
    fn emit(&mut self, at: i64, messages: u64) {
        let len = self.line.len() as u64;
        let max = self.max_file_bytes;
        if self.file.as_ref().is_some_and(|f| hour(at) > f.hour || (f.size() > 0 && f.size() + len > max)) {
            self.close(false);
        }
        if self.file.is_none() && !self.reopen() {
            return self.lose(at, messages);
        }
        let Some(f) = self.file.as_mut() else { return };
        f.push(&self.line, (messages > 0).then_some(at));
        if f.buffered() >= BUFFER {
            self.flush();
        }
    }

    /// Flushes every [`FLUSH_EVERY`]; closes the file once its hour has passed.
    fn tick(&mut self) {
        let Some(f) = self.file.as_ref() else { return };
        if hour(crate::clock::now_micros()) > f.hour {
            return self.close(false);
        }
        if f.flushed_at.elapsed() >= FLUSH_EVERY {
            self.flush();
        }
    }

    /// Flushes the open file and counts what reached it; on an error, counts
    /// what did not and abandons the file. False if there is no file after.
    fn flush(&mut self) -> bool {
        let Some(f) = self.file.as_mut() else { return false };
        match f.flush() {
            Ok(done) => {
                self.stats.wrote(done.messages, done.bytes);
                self.stats.set_file_bytes(f.flushed());
                if done.bytes > 0 && std::mem::take(&mut self.failing) {
                    log::info!(event = "record_resumed"; "record: writing again, into {}", f.name);
                }
                true
            }
            Err(failed) => {
                self.stats.lost(failed.pending.map_or(0, |h| h.count));
                self.lost = Hole::join(Hole::join(self.lost, failed.carried), failed.pending);
                self.fail(failed.what);
                self.abandon();
                false
            }
        }
    }

    /// A new file, unless a disk error asked to wait.
    fn reopen(&mut self) -> bool {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        match self.open() {
            Ok(()) => true,
            Err(e) => {
                self.fail(format!("cannot create a file in {}: {e}", self.dir.display()));
                self.retry_at = Some(Instant::now() + self.retry_every);
                false
            }
        }
    }

    /// Creates the next file, named by its start time (later than any before).
    /// Its first line notes the messages lost to disk errors, if any were.
    fn open(&mut self) -> io::Result<()> {
        let now = crate::clock::now_micros();
        let mut start = now.max(self.last_start.saturating_add(1));
        let mut f = loop {
            let name = file_name(start);
            self.pass.opening(&name);
            match OpenFile::create(&self.dir, name, hour(now), self.disk_full.clone()) {
                Ok(f) => break f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && start - now < 1000 => start += 1,
                Err(e) => return Err(e),
            }
        };
        self.last_start = start;
        if let Some(h) = self.lost.take() {
            let (n, from, to) = (h.count, format_time(h.from), format_time(h.to));
            f.carry(h, format!("# hedgehog: {n} messages lost to disk errors between {from} and {to}\n").as_bytes());
        }
        self.stats.set_file(Some(f.name.clone()));
        self.file = Some(f);
        Ok(())
    }

    /// Flushes and closes the file; one that nothing reached is removed.
    /// `last`: the stop's close, which also syncs, and leaves the file
    /// uncompressed (for a fast stop; the next start compresses it).
    fn close(&mut self, last: bool) {
        if !self.flush() {
            return;
        }
        let Some(f) = self.file.take() else { return };
        self.stats.set_file(None);
        self.stats.set_file_bytes(0);
        if let Err(e) = if last { f.sync() } else { Ok(()) } {
            self.fail(format!("cannot sync {}: {e}", f.name));
        }
        f.close();
        self.pass.closed(last);
    }

    /// After a disk error: the file is given up (what reached it is kept and
    /// compressed; if nothing did, it is removed), and no new one is tried for
    /// `retry_every`.
    fn abandon(&mut self) {
        if let Some(f) = self.file.take() {
            f.close();
        }
        self.stats.set_file(None);
        self.stats.set_file_bytes(0);
        self.retry_at = Some(Instant::now() + self.retry_every);
        self.pass.closed(false);
    }

    /// Messages that came while no file could be opened.
    fn lose(&mut self, at: i64, messages: u64) {
        if messages > 0 {
            self.stats.lost(messages);
            self.lost = Some(Hole::add(self.lost, at));
        }
    }

    fn fail(&mut self, what: String) {
        if !std::mem::replace(&mut self.failing, true) {
            log::warn!(event = "record_error";
                "record: {what} (counted in /healthz; recording resumes when the disk allows)");
        }
        self.stats.error(what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::files::Compressor;

    fn writer(dir: &std::path::Path, adjust: impl FnOnce(&mut RecordConfig)) -> (Writer, Arc<Stats>) {
        static LOGGER: std::sync::Once = std::sync::Once::new();
        LOGGER.call_once(|| {
            if log::set_logger(&CAPTURE).is_ok() {
                log::set_max_level(log::LevelFilter::Info);
            }
        });
        let mut cfg = RecordConfig::new(dir.to_path_buf());
        adjust(&mut cfg);
        let stats = Arc::new(Stats::default());
        let (_compressor, pass) = Compressor::new(&cfg, stats.clone());
        (Writer::new(&cfg, stats.clone(), Arc::new(AtomicBool::new(false)), pass), stats)
    }

    fn entry(at: i64) -> Entry {
        let payload = br#"{"type":"ticker"}"#;
        let frame = crate::ws::frame::text(payload);
        Entry { at, start: frame.len() - payload.len(), frame: Some(frame), hole: None }
    }

    fn texts(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        names.sort();
        names.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect()
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("hedgehog-writer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn times_are_seconds_with_six_decimals() {
        assert_eq!(format_time(1_733_011_200_123_456), "1733011200.123456");
        assert_eq!(format_time(5), "0.000005");
        assert_eq!(hour(3_600_000_000 * 5 + 1), 5);
    }

    #[test]
    fn a_new_hour_starts_a_new_file() {
        let dir = temp("hour");
        let (mut w, _) = writer(&dir, |_| {});
        w.open_first().unwrap();
        let now = crate::clock::now_micros();
        w.take(entry(now));
        w.take(entry(now + 3_600_000_000));
        w.close(true);
        let texts = texts(&dir);
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert_eq!(texts[1], format!("{}: {{\"type\":\"ticker\"}}\n", format_time(now + 3_600_000_000)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lost_directory_is_counted_and_noted_in_the_next_file() {
        let dir = temp("lost");
        let (mut w, stats) = writer(&dir, |_| {});
        w.open_first().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let now = crate::clock::now_micros();
        w.take(entry(now)); // buffered for the open (now unlinked) file
        w.take(entry(now + 3_600_000_000)); // a new hour: the flush finds the file gone; no directory for a new one
        let r = stats.report();
        assert_eq!((r.messages, r.lost, r.errors), (0, 2, 1), "{r:?}");
        std::fs::create_dir_all(&dir).unwrap();
        w.take(entry(now + 3_600_000_001)); // too soon: waits for retry_every
        w.retry_at = None;
        w.take(entry(now + 3_600_000_002));
        w.close(true);
        let texts = texts(&dir);
        assert_eq!(texts.len(), 1, "{texts:?}");
        let lines: Vec<&str> = texts[0].lines().collect();
        assert!(lines[0].starts_with("# hedgehog: 3 messages lost to disk errors between "), "{lines:?}");
        assert_eq!(lines.len(), 2);
        let r = stats.report();
        assert_eq!((r.messages, r.lost, r.errors), (1, 3, 1), "{r:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_replaced_under_its_name_is_an_error_and_the_other_file_is_left() {
        let dir = temp("replaced");
        let (mut w, stats) = writer(&dir, |_| {});
        w.open_first().unwrap();
        let name = w.file.as_ref().unwrap().name.clone();
        std::fs::remove_file(dir.join(&name)).unwrap();
        std::fs::write(dir.join(&name), "theirs\n").unwrap();
        w.take(entry(crate::clock::now_micros()));
        assert!(!w.flush());
        let r = stats.report();
        assert_eq!((r.messages, r.lost, r.errors, r.file.as_deref()), (0, 1, 1, None), "{r:?}");
        assert_eq!(texts(&dir), ["theirs\n"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_disk_keeps_whole_lines_removes_empty_files_and_is_logged_once() {
        let dir = temp("full");
        let full = DiskFull::default();
        let (mut w, stats) = writer(&dir, |c| c.disk_full = Some(full.clone()));
        w.open_first().unwrap();
        let now = crate::clock::now_micros();
        w.take(entry(now));
        assert!(w.flush());
        full.set(true);
        for i in 1..=3 {
            w.take(entry(now + i));
        }
        assert!(!w.flush());
        let r = stats.report();
        assert_eq!((r.messages, r.lost, r.errors), (1, 3, 1), "{r:?}");
        let line = format!("{}: {{\"type\":\"ticker\"}}\n", format_time(now));
        assert_eq!(texts(&dir), [&line[..]], "cut back to its last whole line");
        // Retries on the full disk: each new file is removed, and nothing more is logged.
        for i in 4..=5 {
            w.retry_at = None;
            w.take(entry(now + i));
            assert!(w.file.is_some());
            assert!(!w.flush());
        }
        assert_eq!(texts(&dir), [&line[..]], "no empty files left");
        let r = stats.report();
        assert_eq!((r.messages, r.lost, r.errors), (1, 5, 3), "{r:?}");
        // Room again: the note of what was lost, and one line saying so.
        full.set(false);
        w.retry_at = None;
        w.take(entry(now + 6));
        assert!(w.flush());
        let texts = texts(&dir);
        assert!(texts[1].starts_with("# hedgehog: 5 messages lost to disk errors between "), "{texts:?}");
        let r = stats.report();
        assert_eq!((r.messages, r.lost, r.errors), (2, 5, 3), "{r:?}");
        assert_eq!(r.bytes, texts.iter().map(|t| t.len() as u64).sum::<u64>());
        let logged = logged();
        assert_eq!(logged.len(), 2, "{logged:?}");
        assert!(logged[0].contains("No space left on device"), "{logged:?}");
        assert!(logged[1].starts_with("record: writing again, into "), "{logged:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// What the writer logged on this thread (tests run in parallel).
    fn logged() -> Vec<String> {
        let me = std::thread::current().id();
        CAPTURE.0.lock().unwrap().iter().filter(|(t, _)| *t == me).map(|(_, m)| m.clone()).collect()
    }

    struct Capture(std::sync::Mutex<Vec<(std::thread::ThreadId, String)>>);

    static CAPTURE: Capture = Capture(std::sync::Mutex::new(Vec::new()));

    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.target().starts_with(module_path!().trim_end_matches("::tests"))
        }

        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                self.0.lock().unwrap().push((std::thread::current().id(), r.args().to_string()));
            }
        }

        fn flush(&self) {}
    }
}
