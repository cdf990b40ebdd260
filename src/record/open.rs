//! The file being written: its buffer, what the buffer holds, and a flush
//! that tells whether the bytes reached the file and the file is still there.
//!
//! The buffer is ours, not a `BufWriter`'s, so that what reached the file is
//! known exactly. A flush writes the whole buffer and then checks that the file
//! still has a name and that `DIR/name` is still this file (an open file
//! survives `rm -rf DIR`: without the check the writer would go on filling a
//! deleted file). Only then do the buffered messages count as written. If the
//! write or the check fails, they count as lost, and a partly written buffer
//! is cut off, so that a file always ends with a whole line.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{DiskFull, Hole};

pub(super) struct OpenFile {
    pub name: String,
    path: PathBuf,
    file: File,
    /// Device and inode: `DIR/name` is still this file if they match.
    id: (u64, u64),
    /// Lines not yet written to the file.
    buf: Vec<u8>,
    /// The messages in `buf` (notes are not messages).
    pending: Option<Hole>,
    /// Messages lost before this file was opened, whose note is in `buf`.
    carried: Option<Hole>,
    /// Bytes that reached the file.
    flushed: u64,
    /// The UTC hour it was opened in (hours since the epoch).
    pub hour: i64,
    pub flushed_at: Instant,
    disk_full: Option<DiskFull>,
}

/// What a flush wrote: messages, and bytes (notes included).
pub(super) struct Flushed {
    pub messages: u64,
    pub bytes: u64,
}

/// A failed flush: what went wrong, the messages of the buffer (now lost), and
/// those lost before the file whose note was in it (already counted as lost).
pub(super) struct Failed {
    pub what: String,
    pub pending: Option<Hole>,
    pub carried: Option<Hole>,
}

impl OpenFile {
    /// Creates `dir/name`, which must not exist.
    pub fn create(dir: &Path, name: String, hour: i64, disk_full: Option<DiskFull>) -> io::Result<OpenFile> {
        let path = dir.join(&name);
        let file = OpenOptions::new().write(true).create_new(true).open(&path)?;
        let meta = file.metadata()?;
        Ok(OpenFile {
            name,
            path,
            file,
            id: (meta.dev(), meta.ino()),
            buf: Vec::new(),
            pending: None,
            carried: None,
            flushed: 0,
            hour,
            flushed_at: Instant::now(),
            disk_full,
        })
    }

    /// Bytes written and buffered: what the file will hold.
    pub fn size(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// Bytes that reached the file.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Buffers a line: a message that arrived at `at`, or a note (`None`).
    pub fn push(&mut self, line: &[u8], at: Option<i64>) {
        self.buf.extend_from_slice(line);
        if let Some(at) = at {
            self.pending = Some(Hole::add(self.pending, at));
        }
    }

    /// Buffers `note`, which tells of the messages `lost` before this file.
    pub fn carry(&mut self, lost: Hole, note: &[u8]) {
        self.buf.extend_from_slice(note);
        self.carried = Hole::join(self.carried, Some(lost));
    }

    /// Writes the buffer, then checks the file is still `DIR/name`.
    pub fn flush(&mut self) -> Result<Flushed, Failed> {
        self.flushed_at = Instant::now();
        let checked = self.write_buf().map_err(|e| format!("cannot write {}: {e}", self.name));
        if let Err(what) = checked.and_then(|()| self.in_place()) {
            // What a failed write left is cut off: the file ends with a whole line.
            let _ = self.file.set_len(self.flushed);
            self.buf.clear();
            return Err(Failed { what, pending: self.pending.take(), carried: self.carried.take() });
        }
        let done = Flushed { messages: self.pending.take().map_or(0, |h| h.count), bytes: self.buf.len() as u64 };
        self.carried = None;
        self.flushed += done.bytes;
        self.buf.clear();
        Ok(done)
    }

    fn write_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.disk_full.as_ref().is_some_and(DiskFull::is_full) {
            // The test's full disk: part of the bytes land, then the error.
            self.file.write_all(&self.buf[..self.buf.len() / 2])?;
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.file.write_all(&self.buf)
    }

    /// `Err` if the file has no name left, or `DIR/name` is another file.
    fn in_place(&self) -> Result<(), String> {
        let gone = || format!("{} was removed (or DIR was) while being written", self.path.display());
        match (self.file.metadata(), fs::metadata(&self.path)) {
            (Ok(open), _) if open.nlink() == 0 => Err(gone()),
            (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => Err(gone()),
            (_, Ok(named)) if (named.dev(), named.ino()) != self.id => Err(gone()),
            (Ok(_), Ok(_)) => Ok(()),
            (Err(e), _) | (_, Err(e)) => Err(format!("cannot check {}: {e}", self.path.display())),
        }
    }

    /// Syncs what was flushed to the disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Closes the file; removes it if nothing reached it (and it is still ours).
    pub fn close(self) {
        if self.flushed == 0 && self.in_place().is_ok() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
