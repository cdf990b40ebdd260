//! A system that does not give glommio what it needs stops hedgehog at start-up
//! with one line naming the fix and exit status 2: here, the real binary under
//! `prlimit --memlock` below glommio's 512 KiB floor. (io_uring refused is tested
//! on the verdict, in `preflight`'s unit tests: no seccomp tool is at hand here.)

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use common::Running;

/// `hedgehog args` (with `envs`) under a locked-memory limit of `kib`, and its
/// stderr lines.
fn under_memlock(kib: u64, args: &[&str], envs: &[(&str, &str)]) -> (Running, Receiver<String>) {
    let child = Command::new("prlimit")
        .arg(format!("--memlock={0}:{0}", kib * 1024))
        .arg(env!("CARGO_BIN_EXE_hedgehog"))
        .args(args)
        .env_remove("HEDGEHOG_CONFIG")
        .env_remove("HEDGEHOG_LOG_FORMAT")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("prlimit (util-linux) runs the binary");
    let mut running = Running(child);
    let stderr = running.0.stderr.take().expect("its stderr");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (running, lines)
}

/// Every line until stderr ends (the process exits), within a deadline.
fn all_lines(lines: &Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut all = Vec::new();
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => all.push(line),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return all,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("still running after 20 s: {all:?}"),
        }
    }
}

fn assert_one_memlock_line(args: &[&str]) {
    let (mut running, lines) = under_memlock(256, args, &[]);
    let said = all_lines(&lines);
    let status = running.0.wait().expect("its status");
    assert_eq!(status.code(), Some(2), "{said:?}");
    assert_eq!(said.len(), 1, "one line: {said:?}");
    let line = &said[0];
    assert!(
        line.starts_with("hedgehog: the locked-memory limit (RLIMIT_MEMLOCK) is 256 KiB, below the 512 KiB"),
        "{line}"
    );
    for fix in ["ulimit -l", "LimitMEMLOCK=", "--ulimit memlock="] {
        assert!(line.contains(fix), "names {fix}: {line}");
    }
}

#[test]
fn serve_under_too_small_a_memlock_limit_says_so_in_one_line_and_exits_2() {
    assert_one_memlock_line(&["--host", "127.0.0.1", "--port", "0", "--simulate"]);
}

#[test]
fn simulate_under_too_small_a_memlock_limit_says_so_in_one_line_and_exits_2() {
    assert_one_memlock_line(&["simulate", "--host", "127.0.0.1", "--port", "0"]);
}

#[test]
fn serve_with_two_shards_starts_at_glommios_floor() {
    let args = ["--host", "127.0.0.1", "--port", "0", "--simulate"];
    let (_running, lines) = under_memlock(512, &args, &[("WEB_CONCURRENCY", "2")]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("it says it listens within 20 s");
        assert!(!line.contains("locked-memory limit (RLIMIT_MEMLOCK)"), "{line}");
        if line.contains("listening on") && line.contains("with 2 shard(s)") {
            return;
        }
    }
}
