//! `--record DIR`: every upstream message, with its arrival time, in files that
//! replay byte for byte; the feed never waits for the disk; files rotate, are
//! gzip'd, and stay within a total; a stop flushes.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{http, relay_client, relay_with, simulator, wait_until, Client, DEADLINE};
use hedgehog::record::{DiskFull, Hold, RecordConfig, GZ_SUFFIX, LOCK_FILE, LOG_SUFFIX};
use serde_json::Value;

/// A directory of its own, removed at the end.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("hedgehog-record-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A line of a recording.
#[derive(Debug, PartialEq)]
enum Line {
    /// `<seconds>.<micros>: <payload>`: the time in microseconds, the payload.
    Message(i64, String),
    /// `# ...`: hedgehog's note.
    Note(String),
}

/// Parses one line, failing the test on anything but the two forms.
fn parse(line: &str) -> Line {
    if line.starts_with('#') {
        return Line::Note(line.to_string());
    }
    let (time, payload) = line.split_once(": ").unwrap_or_else(|| panic!("no `: ` in {line:?}"));
    let (secs, micros) = time.split_once('.').unwrap_or_else(|| panic!("no fraction in {line:?}"));
    assert!(micros.len() == 6 && (secs.len() + micros.len()) == time.len() - 1, "{line:?}");
    let at = secs.parse::<i64>().unwrap() * 1_000_000 + micros.parse::<i64>().unwrap();
    assert!(serde_json::from_str::<Value>(payload).is_ok_and(|v| v.is_object()), "not a JSON object: {line:?}");
    Line::Message(at, payload.to_string())
}

/// The names in `dir` but the lock file, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != LOCK_FILE)
        .collect();
    names.sort();
    names
}

/// The recording files in `dir`, oldest first: each name and its text
/// (`.gz` files decompressed).
fn files(dir: &Path) -> Vec<(String, String)> {
    let names = names(dir);
    names
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            let text = if name.ends_with(GZ_SUFFIX) {
                let mut text = String::new();
                flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text).expect("valid gzip");
                text
            } else {
                assert!(name.ends_with(LOG_SUFFIX), "an unexpected file: {name}");
                String::from_utf8(bytes).unwrap()
            };
            assert!(text.is_empty() || text.ends_with('\n'), "{name} ends with a whole line");
            (name, text)
        })
        .collect()
}

/// Every line of every file, in order; times never go back.
fn lines(dir: &Path) -> Vec<Line> {
    let all: Vec<Line> = files(dir).iter().flat_map(|(_, text)| text.lines().map(parse).collect::<Vec<_>>()).collect();
    let times: Vec<i64> =
        all.iter().filter_map(|l| if let Line::Message(at, _) = l { Some(*at) } else { None }).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "times go back");
    all
}

fn recording(dir: &Path, adjust: impl FnOnce(&mut RecordConfig)) -> Option<Box<RecordConfig>> {
    let mut r = RecordConfig::new(dir.to_path_buf());
    adjust(&mut r);
    Some(Box::new(r))
}

/// The simulator trading BTC-USD at `rate`, and a relay of `shards` in front of
/// it recording into `dir` as `adjust` says.
fn recording_relay(
    dir: &Path,
    rate: f64,
    shards: usize,
    adjust: impl FnOnce(&mut RecordConfig),
) -> (hedgehog::sim::SimHandle, hedgehog::server::RelayHandle) {
    let sim = simulator(|c| {
        c.products = vec!["BTC-USD".into()];
        c.rate = rate;
    });
    let relay = relay_with(&sim.url(), |c| {
        c.shards = shards;
        c.record = recording(dir, adjust);
    });
    (sim, relay)
}

fn subscribe(addr: std::net::SocketAddr, channels: &str) -> Client {
    let (mut client, id) = relay_client(addr);
    let path = format!("/api/v1/subscribe/BTC-USD?channels={channels}");
    assert_eq!(http(addr, "POST", &path, &format!("X-Client-Id: {id}\r\n")).0, 200);
    client.until("subscribed", |v| v["type"] == "subscribed");
    client
}

fn is_trade(v: &Value) -> bool {
    (v["type"] == "ticker" || v["type"] == "match") && v["product_id"] == "BTC-USD"
}

#[test]
fn the_recording_holds_what_clients_got_byte_for_byte_and_in_order() {
    let dir = TempDir::new("order");
    let (_sim, relay) = recording_relay(&dir.0, 50.0, 2, |_| {});
    let mut client = subscribe(relay.addr, "ticker,matches");
    // The first frames of a join (latest ticker, last_match) are skipped: what
    // follows is the live stream, every message of the topic.
    let mut got = Vec::new();
    let mut seen = 0;
    while got.len() < 100 {
        let text = client.text();
        if is_trade(&serde_json::from_str(&text).unwrap()) {
            seen += 1;
            if seen > 3 {
                got.push(text);
            }
        }
    }
    let global = relay.global.clone();
    relay.shutdown(DEADLINE).expect("a graceful stop");
    let report = global.recording().expect("recording");
    assert_eq!((report.dropped, report.lost, report.errors), (0, 0, 0), "{report:?}");

    let lines = lines(&dir.0);
    assert!(!lines.iter().any(|l| matches!(l, Line::Note(_))), "no notes without holes");
    let payloads: Vec<&str> =
        lines.iter().filter_map(|l| if let Line::Message(_, p) = l { Some(&p[..]) } else { None }).collect();
    assert_eq!(payloads.len() as u64, report.messages);
    assert!(payloads.iter().any(|p| p.starts_with(r#"{"type":"subscriptions""#)), "replies are recorded too");
    assert!(payloads.iter().any(|p| p.starts_with(r#"{"type":"status""#)));
    let trades: Vec<&str> = payloads.iter().copied().filter(|p| is_trade(&serde_json::from_str(p).unwrap())).collect();
    let start = trades.iter().position(|p| *p == got[0]).expect("the client's first message is recorded");
    assert!(trades.len() >= start + got.len(), "the recording stops short");
    assert_eq!(&trades[start..start + got.len()], &got[..], "the same bytes, in the same order");
}

#[test]
fn a_blocked_writer_costs_the_recording_not_the_clients() {
    let dir = TempDir::new("blocked");
    let hold = Hold::default();
    hold.close();
    let (_sim, relay) = recording_relay(&dir.0, 100.0, 2, |r| {
        r.queue_messages = 4;
        r.hold = Some(hold.clone());
    });
    let mut client = subscribe(relay.addr, "matches");
    let global = relay.global.clone();
    let dropped = || global.recording().expect("recording").dropped;
    let (mut last, mut matches) = (None::<u64>, 0);
    let end = Instant::now() + DEADLINE;
    while matches < 200 || dropped() < 50 {
        assert!(Instant::now() < end, "timed out: {matches} matches, {} dropped", dropped());
        let v = client.json();
        if v["type"] == "match" {
            let id = v["trade_id"].as_u64().unwrap();
            if let Some(prev) = last {
                assert_eq!(id, prev + 1, "the client missed a trade while the recorder was blocked");
            }
            (last, matches) = (Some(id), matches + 1);
        }
    }
    let (_, _, health) = http(relay.addr, "GET", "/healthz", "");
    assert!(health["recording"]["dropped"].as_u64().unwrap() >= 50, "{health}");
    assert_eq!(health["recording"]["dir"], dir.0.display().to_string());

    hold.open();
    relay.shutdown(DEADLINE).expect("a graceful stop");
    let report = global.recording().unwrap();
    let notes: Vec<String> =
        lines(&dir.0).into_iter().filter_map(|l| if let Line::Note(n) = l { Some(n) } else { None }).collect();
    let noted: u64 = notes
        .iter()
        .map(|n| {
            let rest = n.strip_prefix("# hedgehog: ").unwrap_or_else(|| panic!("{n}"));
            let (count, why) = rest.split_once(' ').unwrap();
            assert!(why.starts_with("messages dropped from the recording (queue full) between "), "{n}");
            count.parse::<u64>().unwrap()
        })
        .sum();
    assert!(!notes.is_empty());
    assert_eq!(noted, report.dropped, "every dropped message is in a note: {notes:?}");
}

#[test]
fn files_rotate_by_size_are_gzipped_and_the_oldest_go_first() {
    let dir = TempDir::new("rotate");
    let (max_file, max_total) = (4096, 16384);
    let (_sim, relay) = recording_relay(&dir.0, 100.0, 1, |r| {
        r.max_file_bytes = max_file;
        r.max_bytes = max_total;
    });
    let global = relay.global.clone();
    let first = global.recording().unwrap().file.expect("the first file is open from the start");
    let _client = subscribe(relay.addr, "ticker,matches");
    wait_until("the first file is deleted", || {
        !dir.0.join(&first).exists() && !dir.0.join(format!("{first}.gz")).exists()
    });
    relay.shutdown(DEADLINE).expect("a graceful stop");
    assert_eq!(global.recording().unwrap().dropped, 0);

    let files = files(&dir.0);
    assert!(files.len() >= 3, "{:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());
    for (name, text) in &files[..files.len() - 1] {
        assert!(name.ends_with(GZ_SUFFIX), "a closed file is compressed: {name}");
        assert!(text.len() as u64 <= max_file, "{name}: {} bytes", text.len());
    }
    // The total: closed files are pruned to max_total - max_file, and the open one
    // (kept uncompressed by the stop) stays within max_file.
    let on_disk: u64 = names(&dir.0).iter().map(|name| dir.0.join(name).metadata().unwrap().len()).sum();
    assert!(on_disk <= max_total, "{on_disk} bytes on disk");
    // Only the oldest went: the trades left run on with no gap across files.
    let trade_ids: Vec<u64> = lines(&dir.0)
        .iter()
        .filter_map(|l| match l {
            Line::Message(_, p) => serde_json::from_str::<Value>(p).ok(),
            Line::Note(n) => panic!("no holes here: {n}"),
        })
        .filter(|v| v["type"] == "match")
        .map(|v| v["trade_id"].as_u64().unwrap())
        .collect();
    assert!(trade_ids.len() >= 5, "{trade_ids:?}");
    assert!(trade_ids.windows(2).all(|w| w[1] == w[0] + 1), "a gap: {trade_ids:?}");
}

/// The binary with `--record DIR` (flag or environment), on port 0 with an
/// upstream that is never reached: its exit status and stderr.
fn start_recording_binary(dir: &str, by_env: bool) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hedgehog"));
    cmd.args(["--host", "127.0.0.1", "--port", "0", "--upstream-url", "ws://127.0.0.1:1"]);
    cmd.env("WEB_CONCURRENCY", "1").env_remove("HEDGEHOG_RECORD_DIR");
    match by_env {
        true => cmd.env("HEDGEHOG_RECORD_DIR", dir),
        false => cmd.args(["--record", dir]),
    };
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = common::Running(cmd.spawn().unwrap());
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "started, and still running: it should have refused {dir}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.0.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn a_directory_that_cannot_be_made_is_a_one_line_error_and_exit_2() {
    let dir = TempDir::new("cli");
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("a-file");
    std::fs::write(&file, b"").unwrap();
    let bad = file.join("records").display().to_string();
    let file = file.display().to_string();
    let cases = [(&bad, "cannot create the directory: Not a directory"), (&file, "it exists and is not a directory")];
    for (path, why) in cases {
        for by_env in [false, true] {
            let (code, stderr) = start_recording_binary(path, by_env);
            assert_eq!(code, Some(2), "{stderr}");
            assert_eq!(stderr.lines().count(), 1, "{stderr}");
            assert!(stderr.starts_with(&format!("hedgehog: --record {path}: {why}")), "{stderr}");
        }
    }
}

#[test]
fn a_directory_another_relay_records_into_is_refused() {
    let dir = TempDir::new("shared");
    let (_sim, relay) = recording_relay(&dir.0, 10.0, 1, |_| {});
    let path = dir.0.display().to_string();
    for by_env in [false, true] {
        let (code, stderr) = start_recording_binary(&path, by_env);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        let why = format!("is used by another hedgehog (pid {})", std::process::id());
        assert!(stderr.starts_with(&format!("hedgehog: --record {path}: {path} {why}")), "{stderr}");
    }
    // In one process too: the lock is the directory's, not the process's.
    let cfg = RecordConfig::new(dir.0.clone());
    let second = hedgehog::record::Recorder::start(&cfg).map(|_| ()).unwrap_err();
    assert!(second.contains("is used by another hedgehog"), "{second}");
    relay.shutdown(DEADLINE).expect("a graceful stop");
    // Released with the recorder: the directory can be recorded into again.
    let (recorder, _tap) = hedgehog::record::Recorder::start(&cfg).expect("the lock is released on stop");
    assert!(recorder.close(DEADLINE));
}

#[test]
fn sigterm_flushes_and_closes_the_file() {
    let dir = TempDir::new("sigterm");
    let (child, addr) = common::start_binary(&["--simulate", "--record", &dir.0.display().to_string()]);
    let child = common::Running(child);
    let mut client = subscribe(addr, "ticker,matches");
    let last = client.until("a trade", is_trade);
    let ok = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap().success();
    assert!(ok);
    let mut child = child;
    let end = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < end, "still running long after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let payloads: Vec<String> =
        lines(&dir.0).into_iter().filter_map(|l| if let Line::Message(_, p) = l { Some(p) } else { None }).collect();
    assert!(payloads.contains(&last), "the last trade the client saw was written before the exit");
}

/// The recorded messages of `product` (every channel), in order.
fn recorded_of(dir: &Path, product: &str) -> Vec<String> {
    lines(dir)
        .into_iter()
        .filter_map(|l| match l {
            Line::Message(_, p) => Some(p),
            Line::Note(_) => None,
        })
        .filter(|p| serde_json::from_str::<Value>(p).unwrap()["product_id"] == product)
        .collect()
}

#[test]
fn a_recording_replays_through_the_relay_byte_for_byte() {
    const CHANNELS: &str = "ticker,matches,level2_batch,heartbeat";
    let dir = TempDir::new("roundtrip");
    // Record: a relay in front of the market simulator, with a subscriber to
    // every channel of BTC-USD (its snapshot, first frames and live data).
    {
        let (_sim, relay) = recording_relay(&dir.0, 50.0, 2, |_| {});
        let mut client = subscribe(relay.addr, CHANNELS);
        let (mut matches, mut heartbeats) = (0, 0);
        while matches < 40 || heartbeats < 2 {
            let v = client.json();
            matches += usize::from(v["type"] == "match");
            heartbeats += usize::from(v["type"] == "heartbeat");
        }
        relay.shutdown(DEADLINE).expect("a graceful stop");
    }
    let recorded = recorded_of(&dir.0, "BTC-USD");
    let kinds = |want: &str| recorded.iter().filter(|p| p.contains(&format!(r#""type":"{want}""#))).count();
    let counts: Vec<usize> = ["snapshot", "l2update", "match", "heartbeat", "ticker", "last_match"].map(kinds).to_vec();
    assert!(counts[0] == 1 && counts[1] > 0 && counts[2] >= 40 && counts[3] > 0, "{counts:?}");
    let files = files(&dir.0);
    assert_eq!(files.len(), 1, "one file for a short recording: {:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());

    // Replay it: the relay in front of its own replay (`--replay FILE`), held
    // until the subscriber is on, then as fast as it goes.
    let file = dir.0.join(&files[0].0);
    let relay = relay_with("ws://127.0.0.1:1", |c| {
        c.shards = 2;
        (c.replay, c.replay_speed) = (Some(file.clone()), 0.0);
        // A replay that has ended goes quiet: no stall reconnect within the test.
        c.upstream.stall_timeout = Duration::from_secs(120);
    });
    let sim = relay.simulator().expect("the in-process replay");
    sim.set_paused(true);
    let (mut client, id) = relay_client(relay.addr);
    let path = format!("/api/v1/subscribe/BTC-USD?channels={CHANNELS}");
    assert_eq!(http(relay.addr, "POST", &path, &format!("X-Client-Id: {id}\r\n")).0, 200);
    wait_until("the relay subscribed upstream to every channel", || {
        let asked: Vec<String> = common::sim_requests(sim).into_iter().filter(|r| r.contains("subscribe")).collect();
        CHANNELS.split(',').all(|ch| asked.iter().any(|r| r.contains(&format!(r#""{ch}""#))))
    });
    sim.set_paused(false);
    let mut got = Vec::new();
    while got.len() < recorded.len() {
        let text = client.text();
        let v: Value = serde_json::from_str(&text).unwrap();
        // hedgehog's own notes (`subscribed`, `upstream`) are not the feed's.
        let note = ["subscribed", "upstream", "gap"].contains(&v["type"].as_str().unwrap_or(""));
        if v["product_id"] == "BTC-USD" && !note {
            got.push(text);
        }
    }
    // The first difference, not two thousand lines of both.
    let differs = got.iter().zip(&recorded).position(|(g, r)| g != r);
    assert_eq!(differs.map(|i| (i, &got[i], &recorded[i])), None, "the replay differs from the recording");
}

#[test]
fn files_that_only_look_like_recordings_are_left_alone() {
    let dir = TempDir::new("theirs");
    std::fs::create_dir_all(&dir.0).unwrap();
    // An operator's files, named like hedgehog's but not made by it.
    let theirs = [
        "hedgehog-2024-backup.log",
        "hedgehog-notes.log",
        "hedgehog-stderr.log",
        "hedgehog-20261130T120000Z.log",
        "hedgehog-20261130T120000.123456Z.log.old",
        "hedgehog-20261130T120000.12345xZ.log.gz",
        "hedgehog-backup.log.gz",
        "hedgehog-backup.log.gz.tmp",
        "old-hedgehog-20261130T120000.123456Z.log",
    ];
    let body: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    for name in theirs {
        std::fs::write(dir.0.join(name), &body).unwrap();
    }
    let (_sim, relay) = recording_relay(&dir.0, 100.0, 1, |r| {
        r.max_file_bytes = 4096;
        r.max_bytes = 8192;
    });
    let global = relay.global.clone();
    let first = global.recording().unwrap().file.expect("the first file is open from the start");
    let _client = subscribe(relay.addr, "ticker,matches");
    wait_until("hedgehog's first file is deleted", || {
        !dir.0.join(&first).exists() && !dir.0.join(format!("{first}{}", &GZ_SUFFIX[LOG_SUFFIX.len()..])).exists()
    });
    relay.shutdown(DEADLINE).expect("a graceful stop");
    for name in theirs {
        let text = std::fs::read_to_string(dir.0.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text == body, "{name} was changed");
    }
    assert_eq!(global.recording().unwrap().errors, 0);
}

/// The messages the `lost to disk errors` notes in `dir` account for.
fn noted_lost(dir: &Path) -> u64 {
    lines(dir)
        .iter()
        .filter_map(|l| match l {
            Line::Note(n) => n.strip_prefix("# hedgehog: "),
            Line::Message(..) => None,
        })
        .filter_map(|n| n.split_once(" messages lost to disk errors between "))
        .map(|(count, _)| count.parse::<u64>().unwrap())
        .sum()
}

/// The message lines in `dir`.
fn recorded(dir: &Path) -> u64 {
    lines(dir).iter().filter(|l| matches!(l, Line::Message(..))).count() as u64
}

#[test]
fn a_full_disk_counts_only_what_reached_it_and_leaves_no_empty_files() {
    let dir = TempDir::new("full");
    let full = DiskFull::default();
    full.set(true);
    let (_sim, relay) = recording_relay(&dir.0, 50.0, 1, |r| {
        r.disk_full = Some(full.clone());
        r.retry_every = Duration::from_millis(100);
    });
    let _client = subscribe(relay.addr, "ticker,matches");
    let global = relay.global.clone();
    let report = move || global.recording().expect("recording");
    wait_until("three files tried and failed", || report().errors >= 3 && report().lost > 0);
    let r = report();
    assert_eq!((r.messages, r.bytes), (0, 0), "nothing reached the disk: {r:?}");
    // Each file tried was removed when nothing could be written to it; at most
    // the one being tried now is there.
    assert!(names(&dir.0).len() <= 1, "{:?}", names(&dir.0));

    // Room again: the messages lost are noted at the top of the next file.
    full.set(false);
    wait_until("writing again", || report().messages > 0);
    // Full again, with lines in a file: it keeps its whole lines, not half of one.
    let errors = report().errors;
    full.set(true);
    wait_until("the disk fills again", || report().errors > errors);
    full.set(false);
    let messages = report().messages;
    wait_until("writing again", || report().messages > messages);
    relay.shutdown(DEADLINE).expect("a graceful stop");

    let r = report();
    let files = files(&dir.0); // each ends with a whole line
    assert!(files.iter().all(|(_, text)| !text.is_empty()), "{files:?}");
    assert_eq!(recorded(&dir.0), r.messages, "messages counts what reached the files: {r:?}");
    let bytes: usize = files.iter().map(|(_, text)| text.len()).sum();
    assert_eq!(bytes as u64, r.bytes, "{r:?}");
    assert_eq!(noted_lost(&dir.0), r.lost, "every message lost is noted: {r:?}");
}

#[test]
fn a_directory_removed_while_recording_is_an_error_and_recording_resumes_when_it_is_back() {
    let dir = TempDir::new("removed");
    let (_sim, relay) = recording_relay(&dir.0, 50.0, 1, |r| r.retry_every = Duration::from_millis(100));
    let _client = subscribe(relay.addr, "ticker,matches");
    let global = relay.global.clone();
    let report = move || global.recording().expect("recording");
    wait_until("messages written", || report().messages > 0);
    std::fs::remove_dir_all(&dir.0).unwrap();
    wait_until("the removal is noticed, and messages lost", || report().errors >= 1 && report().lost > 0);
    assert_eq!(report().file, None, "{:?}", report());
    // Written before the removal, and gone with it.
    let gone = report().messages;
    std::fs::create_dir(&dir.0).unwrap();
    wait_until("writing again", || report().messages > gone);
    relay.shutdown(DEADLINE).expect("a graceful stop");

    let r = report();
    assert_eq!(recorded(&dir.0), r.messages - gone, "{r:?}");
    assert_eq!(noted_lost(&dir.0), r.lost, "every message lost is noted: {r:?}");
    let first = lines(&dir.0).into_iter().next().expect("a line");
    assert!(matches!(&first, Line::Note(n) if n.contains("lost to disk errors")), "{first:?}");
}
