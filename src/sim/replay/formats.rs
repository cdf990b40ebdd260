//! The capture formats people have, told apart line by line from the content:
//!
//! - **JSON lines**: one feed message per line, as the feed sent it:
//!   `{"type":"ticker","product_id":"BTC-USD",...}`
//! - **Timestamped**: `<unix seconds with fraction>: <message>`, the capture's own
//!   receive time first. hedgehog's recorder writes it (its `#` lines are markers,
//!   such as a hole in the recording), and so do Python feed handlers in their raw
//!   format, whose lines may start with the connection and a direction:
//!   `wss://ws-feed.exchange.coinbase.com -> 1618677817.056746: {...}` is what the
//!   feed sent, `... <- <time>: {...}` what the client sent it, `... <-> <time>` a
//!   connection marker, and a first `configuration: ...` line their header.
//! - **ISO-timestamped**: `<ISO-8601 UTC time> <message>`, as historical tick-data
//!   archives sell it: `2021-04-17T16:43:37.056746Z {"type":"match",...}`.
//!
//! Any of them may be gzip-compressed: a `.gz` name or gzip's magic bytes say so.
//! The message is always kept as the exact bytes on the line (a trailing `\r` aside).

use std::io::{BufRead, BufReader};
use std::path::Path;

/// Which format a line was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Timestamped,
    Iso,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Json, Format::Timestamped, Format::Iso];

    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "JSON lines",
            Format::Timestamped => "`<unix seconds>: <json>`",
            Format::Iso => "`<ISO-8601> <json>`",
        }
    }
}

/// What one line of a capture holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// A message the feed sent; `stamp` is the capture's own time for it
    /// (microseconds since the epoch), when the line carries one.
    Message { format: Format, stamp: Option<i64>, json: &'a [u8] },
    /// Part of a known format but nothing the feed sent: a blank line, a `#`
    /// marker, a header, the client's own request, a connection marker.
    Aside,
    /// No format we know.
    Unparseable,
}

/// Reads one line. `line` excludes its `\n`.
pub fn parse_line(line: &[u8]) -> Line<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.first() {
        None => Line::Aside,
        Some(b'#') => Line::Aside,
        Some(b'{') => Line::Message { format: Format::Json, stamp: None, json: line },
        Some(c) if c.is_ascii_digit() => iso(line).or_else(|| timestamped(line)).unwrap_or(Line::Unparseable),
        Some(c) if c.is_ascii_whitespace() && line.iter().all(u8::is_ascii_whitespace) => Line::Aside,
        Some(_) if line.starts_with(b"configuration: ") => Line::Aside,
        Some(_) => directed(line).unwrap_or(Line::Unparseable),
    }
}

/// `<ISO-8601> <json>`.
fn iso(line: &[u8]) -> Option<Line<'_>> {
    let space = line.iter().position(|&c| c == b' ')?;
    let stamp = crate::clock::parse_iso(std::str::from_utf8(&line[..space]).ok()?)?;
    let json = object(&line[space + 1..])?;
    Some(Line::Message { format: Format::Iso, stamp: Some(stamp), json })
}

/// `<unix seconds>: <json>`.
fn timestamped(line: &[u8]) -> Option<Line<'_>> {
    let colon = line.iter().position(|&c| c == b':')?;
    let stamp = unix_micros(&line[..colon])?;
    let json = object(line[colon + 1..].strip_prefix(b" ")?)?;
    Some(Line::Message { format: Format::Timestamped, stamp: Some(stamp), json })
}

/// `<connection> -> <unix seconds>: <json>` and its siblings `<-` and `<->`.
fn directed(line: &[u8]) -> Option<Line<'_>> {
    let text = std::str::from_utf8(line).ok()?;
    let (connection, rest) = text.split_once(' ')?;
    if !connection.contains("://") {
        return None;
    }
    let (arrow, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    match arrow {
        // What a REST endpoint answered (an order book fetched over HTTP) is not
        // the feed's: set aside.
        "->" if connection.starts_with("http") => Some(Line::Aside),
        "->" => timestamped(rest.as_bytes()),
        "<-" | "<->" => Some(Line::Aside),
        _ => None,
    }
}

/// The rest of a line when it is a JSON object, left as it is.
fn object(rest: &[u8]) -> Option<&[u8]> {
    rest.starts_with(b"{").then_some(rest)
}

/// Unix seconds with an optional fraction (`1618677817.056746`) as microseconds,
/// read as decimal digits so no precision is lost to floating point.
pub fn unix_micros(s: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(s).ok()?;
    let (whole, frac) = s.split_once('.').unwrap_or((s, "0"));
    let digits = |d: &str| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit());
    if !digits(whole) || whole.len() > 12 || !digits(frac) || frac.len() > 9 {
        return None;
    }
    let micros = format!("{frac:0<6}");
    Some(whole.parse::<i64>().ok()? * 1_000_000 + micros[..6].parse::<i64>().ok()?)
}

/// The capture's lines, decompressed when it is gzip (by its name or its first
/// bytes; concatenated gzip members, as rotated files may be, are read through).
pub fn open(path: &Path) -> Result<(Box<dyn BufRead>, bool), String> {
    let cannot = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let magic = reader.fill_buf().map_err(cannot)?.starts_with(&[0x1f, 0x8b]);
    let gzip = magic || path.extension().is_some_and(|e| e == "gz");
    if gzip {
        let decoder = flate2::bufread::MultiGzDecoder::new(reader);
        return Ok((Box::new(BufReader::with_capacity(1 << 16, decoder)), true));
    }
    Ok((Box::new(reader), false))
}

/// The longest line kept: the relay's largest upstream message (a longer one
/// would make it drop the connection and, as a latest ticker, on every reconnect).
pub const MAX_LINE: usize = 16 << 20;

/// Calls `each` with every line of `reader` (without its `\n`), or with `Err(n)`
/// for a line of `n` bytes over [`MAX_LINE`], which is skipped without being held
/// in memory; stops at the first read error, which it returns.
pub fn for_each_line(mut reader: impl BufRead, mut each: impl FnMut(Result<&[u8], usize>)) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(4096);
    let mut skipped = 0; // bytes of an over-long line dropped so far
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            match (skipped, line.is_empty()) {
                (0, true) => {}
                (0, false) => each(Ok(&line)),
                (n, _) => each(Err(n)),
            }
            return Ok(());
        }
        let (chunk, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if skipped > 0 || line.len() + chunk.len() > MAX_LINE {
            skipped += line.len() + chunk.len();
            line.clear();
        } else {
            line.extend_from_slice(chunk);
        }
        let used = end.unwrap_or(chunk.len());
        reader.consume(used);
        if end.is_some() {
            match skipped {
                0 => each(Ok(&line)),
                n => each(Err(n)),
            }
            line.clear();
            skipped = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = r#"{"type":"ticker","product_id":"BTC-USD","time":"2021-04-17T16:43:37.056746Z"}"#;

    fn message(format: Format, stamp: Option<i64>) -> Line<'static> {
        Line::Message { format, stamp, json: MSG.as_bytes() }
    }

    #[test]
    fn tells_the_three_formats_apart() {
        assert_eq!(parse_line(MSG.as_bytes()), message(Format::Json, None));
        let t = format!("1618677817.056746: {MSG}");
        assert_eq!(parse_line(t.as_bytes()), message(Format::Timestamped, Some(1_618_677_817_056_746)));
        let t = format!("2021-04-17T16:43:37.5Z {MSG}");
        assert_eq!(parse_line(t.as_bytes()), message(Format::Iso, Some(1_618_677_817_500_000)));
        let t = format!("2021-04-17T16:43:37.0000001Z {MSG}\r");
        assert_eq!(parse_line(t.as_bytes()), message(Format::Iso, Some(1_618_677_817_000_000)), "7 digits, CRLF");
    }

    #[test]
    fn replays_what_the_feed_sent_and_sets_aside_the_rest() {
        let feed = format!("wss://ws-feed.exchange.coinbase.com -> 1618677817.1: {MSG}");
        assert_eq!(parse_line(feed.as_bytes()), message(Format::Timestamped, Some(1_618_677_817_100_000)));
        for aside in [
            r#"wss://ws-feed.exchange.coinbase.com <- 1618677817.0: {"type":"subscribe","channels":["ticker"]}"#,
            "wss://ws-feed.exchange.coinbase.com <-> 1618677816.9",
            r#"https://api.exchange.coinbase.com/products/BTC-USD/book?level=2 -> 1618677816.8: {"bids":[]}"#,
            r#"configuration: {"log": {"filename": "feedhandler.log"}}"#,
            "# hole: 1618677818.0 to 1618677819.5 (upstream reconnecting)",
            "",
            "   ",
            "\r",
        ] {
            assert_eq!(parse_line(aside.as_bytes()), Line::Aside, "{aside:?}");
        }
    }

    #[test]
    fn anything_else_is_unparseable() {
        for bad in [
            "not json at all",
            "[1,2,3]",
            "1618677817.1:{\"type\":\"x\"}",
            "1618677817.1: [1]",
            "1618677817,1: {}",
            "2021-04-17 16:43:37Z {}",
            "12345678901234567: {}",
            "wss://x => 1.0: {}",
            "\u{feff}{\"type\":\"x\"}",
        ] {
            assert_eq!(parse_line(bad.as_bytes()), Line::Unparseable, "{bad:?}");
        }
    }

    #[test]
    fn unix_seconds_keep_every_microsecond() {
        assert_eq!(unix_micros(b"1749186031.886136"), Some(1_749_186_031_886_136));
        assert_eq!(unix_micros(b"1749186031"), Some(1_749_186_031_000_000));
        assert_eq!(unix_micros(b"1749186031.8861369"), Some(1_749_186_031_886_136));
        for bad in [&b""[..], b".5", b"1.", b"-1.0", b"1e9", b"1.2.3"] {
            assert_eq!(unix_micros(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reads_plain_and_gzip_captures_alike() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("hedgehog-formats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!("{MSG}\n# marker\n{MSG}");
        let plain = dir.join("capture.jsonl");
        std::fs::write(&plain, &text).unwrap();
        // Gzip by content, under a name that does not say so; two members, as a
        // rotated file appended to may hold.
        let zipped = dir.join("capture.bin");
        let mut out = Vec::new();
        for part in [&text[..MSG.len() + 1], &text[MSG.len() + 1..]] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(part.as_bytes()).unwrap();
            out.extend(gz.finish().unwrap());
        }
        std::fs::write(&zipped, out).unwrap();
        for (path, gzip) in [(&plain, false), (&zipped, true)] {
            let (reader, is_gzip) = open(path).unwrap();
            assert_eq!(is_gzip, gzip);
            let mut lines = Vec::new();
            for_each_line(reader, |l| lines.push(String::from_utf8(l.unwrap().to_vec()).unwrap())).unwrap();
            assert_eq!(lines, [MSG, "# marker", MSG], "{}", path.display());
        }
        assert!(open(&dir.join("missing")).err().unwrap().starts_with("cannot read "));
        std::fs::remove_dir_all(&dir).ok();
    }
}
