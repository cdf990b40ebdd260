//! A cluster's parts for the tests: Debian's real `nats-server` with JetStream
//! on a free loopback port (killed with SIGKILL and started again on the same
//! port and store), hedgehog processes in a role (`ingest`, `edge`), and waits
//! on what their `/healthz` says.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{http, Client, Running, DEADLINE};

/// Where Debian puts the server (package `nats-server`, 2.9.10 on bookworm).
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// Lines of a process's log kept for a failing test to show.
const LOG_LINES: usize = 300;

/// The last lines a process wrote to stderr, read by a thread of their own.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<VecDeque<String>>>);

impl Log {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().expect("a log reader never panics holding the lock");
        if lines.len() == LOG_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines, one a line.
    pub fn tail(&self) -> String {
        let lines = self.0.lock().expect("a log reader never panics holding the lock");
        lines.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// Keeps every line of `lines` and sends the first one `pick` maps to `Some`.
    fn follow(
        &self,
        lines: impl Iterator<Item = String> + Send + 'static,
        pick: fn(&str) -> Option<String>,
    ) -> Receiver<String> {
        let (tx, rx): (Sender<String>, Receiver<String>) = std::sync::mpsc::channel();
        let log = self.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in lines {
                if let Some(found) = pick(&line) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(found);
                    }
                }
                log.push(line);
            }
        });
        rx
    }
}

/// A `nats-server -js` of this test's own, killed (SIGKILL) on drop.
pub struct Nats {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    pub log: Log,
}

impl Nats {
    /// Starts one on a free loopback port with JetStream in a fresh store.
    pub fn start() -> Nats {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("hedgehog-nats-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a store directory");
        let mut nats = Nats { child: None, port: 0, dir, log: Log::default() };
        nats.spawn("-1");
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.kill();
        self.log.push("---- restarted by the test ----".into());
        self.spawn(&self.port.to_string());
    }

    /// SIGSTOP (`true`) or SIGCONT: a server that hangs, its connections open.
    pub fn pause(&self, stop: bool) {
        let pid = self.child.as_ref().expect("a running server").id().to_string();
        let signal = if stop { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status().expect("kill runs");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Starts it again on the same port with an empty store (a server whose
    /// volume was not kept): the buckets are gone.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).expect("a store directory");
        self.log.push("---- restarted by the test, its store emptied ----".into());
        self.spawn(&self.port.to_string());
    }

    fn spawn(&mut self, port: &str) {
        assert!(
            std::path::Path::new(NATS_SERVER).exists(),
            "{NATS_SERVER} is missing: these tests need the real NATS server (apt-get install nats-server)"
        );
        let mut cmd = Command::new(NATS_SERVER);
        cmd.args(["-a", "127.0.0.1", "-p", port, "-js", "-sd"]).arg(&self.dir);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        die_with_the_test(&mut cmd);
        let mut child =
            cmd.spawn().unwrap_or_else(|e| panic!("{NATS_SERVER} starts (apt-get install nats-server): {e}"));
        let stderr = child.stderr.take().expect("its stderr");
        use std::io::BufRead;
        let lines = std::io::BufReader::new(stderr).lines().map_while(Result::ok);
        let ready = self.log.follow(lines, |l| l.contains("Server is ready").then(String::new));
        self.child = Some(child);
        if ready.recv_timeout(DEADLINE).is_err() {
            panic!("nats-server did not become ready:\n{}", self.log.tail());
        }
        let tail = self.log.tail();
        let listening = tail.lines().rev().find_map(|l| l.split("Listening for client connections on ").nth(1));
        let found = listening.and_then(|a| a.trim().rsplit(':').next()?.parse().ok());
        self.port = found.unwrap_or_else(|| panic!("nats-server names no client port:\n{tail}"));
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The child gets SIGKILL if the test's thread ends without dropping it (the
/// test binary itself killed): no server outlives its test.
fn die_with_the_test(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A hedgehog process in a cluster role, with two shards, killed on drop.
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    process: Option<Running>,
    pub log: Log,
}

impl Node {
    /// `hedgehog --role ROLE --node NAME --nats URL` on a free loopback port, with `extra` flags.
    pub fn start(role: &str, name: &str, nats: &str, extra: &[&str]) -> Node {
        let mut args = vec!["--host", "127.0.0.1", "--port", "0", "--role", role, "--node", name, "--nats", nats];
        args.extend_from_slice(extra);
        let (process, lines) = Running::hedgehog(&args, &[("WEB_CONCURRENCY", "2"), ("RUST_LOG", "info")]);
        let log = Log::default();
        let listening = log.follow(lines.into_iter(), |l| {
            let rest = l.split("hedgehog listening on ").nth(1)?;
            Some(rest.split_whitespace().next().unwrap_or("").to_string())
        });
        let Ok(addr) = listening.recv_timeout(DEADLINE) else {
            panic!("{role} {name} never said where it listens:\n{}", log.tail());
        };
        let addr = addr.parse().unwrap_or_else(|e| panic!("{role} {name}: not an address {addr:?}: {e}"));
        Node { name: name.into(), addr, process: Some(process), log }
    }

    /// An ingest relaying `upstream`.
    pub fn ingest(name: &str, nats: &str, upstream: &str, extra: &[&str]) -> Node {
        Node::start("ingest", name, nats, &[&["--upstream-url", upstream], extra].concat())
    }

    /// An edge.
    pub fn edge(name: &str, nats: &str, extra: &[&str]) -> Node {
        Node::start("edge", name, nats, extra)
    }

    /// Its `/healthz` report (200 or 503, JSON either way).
    pub fn health(&self) -> Value {
        http(self.addr, "GET", "/healthz", "").2
    }

    /// The report's `cluster` member.
    pub fn cluster(&self) -> Value {
        self.health()["cluster"].clone()
    }

    /// A WebSocket client of this node and the id its welcome gave it.
    pub fn client(&self) -> (Client, String) {
        super::relay_client(self.addr)
    }

    /// SIGKILL, and waits until it is gone.
    pub fn kill(&mut self) {
        drop(self.process.take());
        self.log.push("---- SIGKILL by the test ----".into());
    }

    pub fn alive(&self) -> bool {
        self.process.is_some()
    }

    /// SIGTERM, and its exit status once it has gone (within the deadline).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut running = self.process.take().expect("a running node");
        running.signal("-TERM");
        let end = std::time::Instant::now() + 2 * DEADLINE;
        loop {
            if let Some(status) = running.0.try_wait().expect("its status") {
                self.log.push("---- stopped by SIGTERM from the test ----".into());
                return status;
            }
            assert!(std::time::Instant::now() < end, "{} did not stop on SIGTERM:\n{}", self.name, self.log.tail());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Polls `probe` every 50 ms until it gives `Ok`, for up to twice
/// [`DEADLINE`]; the panic shows what it said last.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let end = Instant::now() + 2 * DEADLINE;
    loop {
        match probe() {
            Ok(t) => return t,
            Err(last) => assert!(Instant::now() < end, "timed out waiting for {what}; last seen: {last}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `node`'s `/healthz` report satisfies `pred`; returns it.
pub fn wait_health(node: &Node, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(&format!("{}: {what}", node.name), || {
        let h = node.health();
        if pred(&h) {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    })
}

/// Waits until `node`'s `cluster` member satisfies `pred`; returns it.
pub fn wait_cluster(node: &Node, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_health(node, what, |h| pred(&h["cluster"]))["cluster"].clone()
}
