//! Settings: defaults, then the `--config` file, then environment, then flags;
//! parsed, then validated.
//!
//! Parsing is done here rather than by a CLI crate so that every mistake is one
//! line on stderr and exit code 2, as operators' scripts expect. The file's own
//! reading is in `config/file.rs`; its access rules are `access`'s.
//!
//! Longer than the other files: the settings, their help text, their parsing and
//! their validation are one table read together; the tests follow at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod file;
pub use file::{check_config, reload_access, ConfigFile};

use crate::access::Access;
use crate::logs::LogFormat;

use crate::protocol::Channel;
use crate::record::RecordConfig;
use crate::sim::SimConfig;
use crate::upstream::UpstreamConfig;
use crate::ws::SlowPolicy;

/// The largest `WEB_CONCURRENCY` taken: more shards than this is a typo.
pub const MAX_SHARDS: usize = 256;

/// What the command line asks for.
// Made once at start and taken apart at once: boxing the larger variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Serve(ServeConfig),
    Simulate(SimConfig),
    /// `hedgehog check-config FILE`: check the file, say what each class may do.
    CheckConfig(PathBuf),
    /// `hedgehog hash-key`: a new API key and its hash.
    HashKey,
    /// `hedgehog healthcheck`: `GET /healthz` of the relay on this host (a
    /// container's HEALTHCHECK; see `healthcheck`).
    Healthcheck(crate::healthcheck::Target),
    Help,
    Version,
}

/// The relay's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// `--node`: this process's name among several behind one proxy; it begins
    /// every client id it hands out (`None`: ids as without it).
    pub node: Option<crate::hub::Node>,
    /// Worker shards (`WEB_CONCURRENCY`).
    pub shards: usize,
    pub upstream: UpstreamConfig,
    /// Channels a subscription gets when it names none.
    pub channels: Vec<Channel>,
    /// Run the built-in simulator and relay it instead of Coinbase.
    pub simulate: bool,
    /// Replay this capture in-process and relay it instead of Coinbase, at
    /// `replay_speed` (0: as fast as possible), from the top again at its end
    /// with `replay_loop`.
    pub replay: Option<PathBuf>,
    pub replay_speed: f64,
    pub replay_loop: bool,
    /// Bytes a client's outbound queue may hold.
    pub client_queue_bytes: usize,
    /// What happens to a client whose queue is full.
    pub slow_consumer: SlowPolicy,
    /// Largest WebSocket message a client may send.
    pub max_message_bytes: usize,
    /// How often the server pings each client; zero: never.
    pub ping_interval: Duration,
    /// A client silent this long is closed; zero: never.
    pub idle_timeout: Duration,
    /// (product, channel) pairs one client may hold.
    pub max_subscriptions: usize,
    /// Open connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Open client connections in all. Past it, a new connection may only ask for
    /// `/livez`, `/readyz` or `/healthz` (the descriptors between this and the
    /// process's file limit are the reserve that keeps them answerable).
    pub max_connections: usize,
    /// A new connection that sends nothing this long is closed.
    pub first_byte_timeout: Duration,
    /// A request head must be complete this long after its first byte (else 408).
    pub header_timeout: Duration,
    /// A request body must be complete this long after its head (else 408).
    pub body_timeout: Duration,
    /// A keep-alive connection idle this long between requests is closed.
    pub keepalive_timeout: Duration,
    /// `/readyz` stays 200 this long after start or after the upstream drops, while
    /// it connects again.
    pub ready_grace: Duration,
    /// How often shards look at their stop flags (the accept-loop regression test
    /// shortens it; not a flag).
    pub stop_poll: Duration,
    /// For tests of start-up failure: this shard's thread panics before it
    /// listens (not a flag).
    pub fail_start: Option<usize>,
    /// Messages in flight between two shards, and held back beyond that (see
    /// `hub::bus`); the ordering and liveness tests shrink them (not flags).
    pub bus_capacity: usize,
    pub bus_backlog: usize,
    /// Requests (HTTP requests and WebSocket messages) one connection may send per
    /// second, sustained; a burst of as many is allowed. Zero: no limit.
    pub max_request_rate: u32,
    /// History kept per (product, channel): messages, age, and bytes in all.
    pub history_size: usize,
    pub history_age: Duration,
    pub history_bytes: usize,
    /// Serve `/echo`, a WebSocket that echoes what it gets (a test aid for the
    /// conformance suite; off by default).
    pub echo: bool,
    /// `--record DIR`: every upstream message to files there. (Boxed: rarely
    /// set, and it would make every `Command` larger.)
    pub record: Option<Box<RecordConfig>>,
    /// `--config FILE` (or `HEDGEHOG_CONFIG`), for a reload to read again.
    pub config_file: Option<PathBuf>,
    /// `--metrics-addr`: a listener of its own serving `GET /metrics` (open:
    /// bind it where only the scraper reaches). `None`: only the main port's
    /// `/metrics` (admins only, with access control).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The file's access rules; `None`: access control is off, everything open.
    /// (Loaded and checked here; the entry points do not enforce them yet.)
    pub access: Option<Arc<Access>>,
    /// `--log-format`: human lines or one JSON object per line.
    pub log_format: LogFormat,
    /// `--tls-cert` and `--tls-key`: the main port serves `https://` and
    /// `wss://` only, with this certificate (reloaded on SIGHUP).
    pub tls: Option<TlsFiles>,
    /// `--tls-port`: TLS on a port of its own, `port` staying plain.
    pub tls_port: Option<u16>,
    /// `--role`: one process (`all`), or an ingest or an edge of several.
    pub role: crate::cluster::Role,
    /// `--nats` and its companions (with `--role ingest|edge`).
    pub cluster: crate::cluster::ClusterConfig,
}

/// A certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "0.0.0.0".into(),
            port: 8080,
            node: None,
            shards: default_shards(),
            upstream: UpstreamConfig::default(),
            channels: vec![Channel::Ticker, Channel::Matches],
            simulate: false,
            replay: None,
            replay_speed: 1.0,
            replay_loop: false,
            client_queue_bytes: 4 << 20,
            slow_consumer: SlowPolicy::Disconnect,
            max_message_bytes: 64 * 1024,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_subscriptions: 100,
            max_connections_per_ip: default_max_per_ip(open_files_limit()),
            max_connections: default_max_connections(open_files_limit()),
            first_byte_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            ready_grace: Duration::from_secs(10),
            stop_poll: Duration::from_millis(20),
            fail_start: None,
            // A few milliseconds of a busy feed each; see hub/bus.rs.
            bus_capacity: 8192,
            bus_backlog: 1024,
            max_request_rate: 20_000,
            history_size: 1000,
            history_age: Duration::from_secs(600),
            history_bytes: 64 << 20,
            echo: false,
            record: None,
            config_file: None,
            metrics_addr: None,
            tls: None,
            tls_port: None,
            role: crate::cluster::Role::All,
            cluster: crate::cluster::ClusterConfig::default(),
            access: None,
            log_format: LogFormat::Text,
        }
    }
}

/// The process's limit on open files (`RLIMIT_NOFILE`, soft), or 1024 if unknown.
pub fn open_files_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    if ok {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX).max(64)
    } else {
        1024
    }
}

/// Descriptors kept back from clients: for the listeners, io_uring, the upstream,
/// logs, and the health checks that must still be answered under a flood.
pub fn reserved_files(limit: usize) -> usize {
    (limit / 20).max(64)
}

/// Connections in all: the file limit less the reserve.
pub fn default_max_connections(limit: usize) -> usize {
    limit.saturating_sub(reserved_files(limit)).max(1)
}

/// Connections per address: a quarter of the file limit, so that no one or two
/// addresses can take every descriptor.
pub fn default_max_per_ip(limit: usize) -> usize {
    (limit / 4).max(1)
}

/// The usage text.
pub const USAGE: &str = "\
hedgehog: relays the Coinbase Exchange feed to many WebSocket clients

Usage:
  hedgehog [serve] [OPTIONS]     run the relay (the default command)
  hedgehog simulate [OPTIONS]    run the Coinbase-compatible feed simulator
  hedgehog check-config FILE     check a config file; say what each access class may do
  hedgehog hash-key              make a new API key; print it, its hash, and the entry
  hedgehog healthcheck [--host H] [--port P] [--timeout S]
                                 GET /healthz of the relay at HOST:PORT (loopback for
                                 0.0.0.0); exit 0 on 200, else 1 (a container's HEALTHCHECK)

Relay options (environment variable in brackets):
  --config FILE          settings ([server]) and access rules, TOML [HEDGEHOG_CONFIG];
                         flags > environment > file > defaults (README: Access control)
  --host HOST            listen address [HOST] (default 0.0.0.0)
  --port PORT            listen port [PORT] (default 8080)
  --node NAME            this process's name behind a proxy (1-16 of a-z, 0-9, _): client
                         ids begin NAME. and name it [HEDGEHOG_NODE] (default: none)
  --upstream-url URL     feed URL [COINBASE_WS_URL] (default wss://ws-feed.exchange.coinbase.com)
  --upstream-ca FILE     extra trusted CA, PEM [COINBASE_CA_FILE]
  --channels LIST        default channels [COINBASE_CHANNELS] (default ticker,matches)
  --stall-timeout SECS   reconnect after this long without a message (default 5)
  --simulate             relay the built-in simulator (offline mode; data is simulated)
  --replay FILE          relay a capture of the feed, replayed in-process (formats: README)
  --speed X              replay speed-up; 0 = as fast as possible (default 1; with --replay)
  --loop                 start the capture again at its end (with --replay)
  --client-queue-bytes N a client's outbound queue limit (default 4194304)
  --slow-consumer P      disconnect (default) or conflate, when a client's queue is full
  --max-message-bytes N  largest message a client may send (default 65536)
  --ping-interval S      server pings every S seconds; 0 = never (default 20)
  --idle-timeout S       close clients silent for S seconds; 0 = never (default 60)
  --max-subscriptions N  product and channel pairs per client (default 100)
  --max-connections-per-ip N  open connections from one address (default: a quarter of
                         the open-files limit, 5000 at 20000)
  --max-connections N    open connections in all; past it only health checks are served
                         (default: the open-files limit less 5%, 19000 at 20000)
  --first-byte-timeout S close a new connection that sends nothing for S seconds (default 10)
  --header-timeout S     a request head must arrive within S seconds of its first byte (default 10)
  --body-timeout S       a request body must arrive within S seconds of its head (default 10)
  --keepalive-timeout S  close a keep-alive connection idle for S seconds (default 60)
  --ready-grace S        /readyz stays 200 for S seconds after start or an upstream loss (default 10)
  --max-request-rate N   requests or messages per second on one connection; 0 = no limit
                         (default 20000)
  --history-size N       messages kept per product and channel; 0 = none (default 1000)
  --history-age S        drop kept messages older than S seconds (default 600)
  --history-bytes N      bytes the history may hold in all (default 67108864)
  --log-format F         text (default) or json: one JSON object per line [HEDGEHOG_LOG_FORMAT]
  --echo                 serve /echo, a WebSocket echo endpoint (a test aid; off by default)
  --record DIR           record every upstream message, timestamped, into files in DIR
                         [HEDGEHOG_RECORD_DIR]
  --record-max-file-bytes N  start a new file (and gzip the last) past N bytes, and
                         every UTC hour (default 268435456)
  --record-max-bytes N   recording files in DIR total at most N bytes, oldest deleted
                         first (default 4294967296)
  --metrics-addr ADDR    also serve GET /metrics, open, on ADDR (host:port) of its own
                         [HEDGEHOG_METRICS_ADDR] (default: only /metrics on the main port)
  --tls-cert FILE        serve https:// and wss:// (only) with this certificate chain, PEM
                         [HEDGEHOG_TLS_CERT]; SIGHUP reads it again
  --tls-key FILE         the certificate's private key, PEM [HEDGEHOG_TLS_KEY]
  --tls-port PORT        TLS on this port instead, --port staying plain [HEDGEHOG_TLS_PORT]
  --role R               all (default: one process), ingest or edge (README: Running
                         several nodes)
  --nats URLS            NATS servers, comma-separated (nats://host:4222); with --role
  --nats-creds FILE      a NATS credentials file
  --nats-ca FILE         an extra CA for tls:// NATS servers, PEM
  --nats-prefix NAME     subjects and key-value bucket name (default hedgehog)
  --lease-ttl S          the active ingest's lease; a standby takes over S seconds after
                         its last renewal (default 3; renewed every second)
  --interest-ttl S       an edge's interest lives S seconds unless renewed (default 10)
  Shards: [WEB_CONCURRENCY] (default: online CPUs)
  Every relay option --name-of-it may also be set as HEDGEHOG_NAME_OF_IT (the command
  line wins; an empty variable is unset).

Simulator options:
  --host HOST            listen address (default 127.0.0.1)
  --port PORT            listen port (default 8765)
  --tls                  serve wss:// with a self-signed certificate made at start
  --cert-out FILE        write that certificate (PEM) here
  --products LIST        product ids (default: 20 real pairs)
  --rate N               trades per second per product (default 3)
  --seed N               make the run reproducible
  --replay FILE          replay a capture of the feed (JSON lines, `<unix time>: <json>`,
                         `<ISO time> <json>`; gzip too) instead of the market
  --speed X              replay speed-up; 0 = as fast as possible (default 1)
  --loop                 start the capture again at its end
  --subscribe-timeout S  close connections that do not subscribe within S seconds; 0 = never (default 5)
  --hold S               no trades for the first S seconds (let subscribers join first)
  --fault LIST           inject faults in turn: drop, reset, stall, garbage, binary, oversized,
                         skip, refuse, slow-handshake, reject
  --fault-every S        seconds between faults (default 10)
  --fault-for S          how long stall, refuse, slow-handshake and reject last (default 3)

  -h, --help             this text
  -V, --version          the version
";

/// Reads the command line (without the program name) and the environment.
pub fn parse(args: &[String], env: &dyn Fn(&str) -> Option<String>) -> Result<Command, String> {
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    if args.iter().any(|a| matches!(*a, "-h" | "--help" | "help")) {
        return Ok(Command::Help);
    }
    if args.iter().any(|a| matches!(*a, "-V" | "--version")) {
        return Ok(Command::Version);
    }
    let command = match args.first() {
        Some(&"check-config") => return check_config_args(&args[1..]),
        Some(&"hash-key") if args.len() == 1 => return Ok(Command::HashKey),
        Some(&"hash-key") => return Err("hash-key takes no arguments".into()),
        Some(&"healthcheck") => return crate::healthcheck::parse(&args[1..], env).map(Command::Healthcheck),
        Some(&"simulate") => "simulate",
        Some(&"serve") => "serve",
        Some(a) if !a.starts_with('-') => return Err(format!("unknown command {a:?} (try --help)")),
        _ => "",
    };
    if !command.is_empty() {
        args.remove(0);
    }
    let known = if command == "simulate" { SIMULATE_FLAGS } else { SERVE_FLAGS };
    // Every relay flag may also come from the environment (containers): given
    // before the command line's, so that a flag there wins.
    let from_env = if command == "simulate" { Vec::new() } else { flags_from_env(env) };
    let args: Vec<&str> = from_env.iter().map(String::as_str).chain(args).collect();
    let flags = Flags::parse(&args, &["tls", "simulate", "echo", "loop"], known)?;
    match command {
        "simulate" => simulate(flags).map(Command::Simulate),
        _ => serve(flags, env).map(Command::Serve),
    }
}

/// The relay's switches (flags without a value).
const SERVE_SWITCHES: &[&str] = &["simulate", "echo", "loop"];

/// `HEDGEHOG_NAME_OF_IT=value` for each relay flag `--name-of-it`, as
/// `--name-of-it=value`; an empty variable is unset.
fn flags_from_env(env: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    SERVE_FLAGS
        .iter()
        .chain(SERVE_SWITCHES)
        .filter_map(|name| {
            let value = env(&env_name(name)).filter(|v| !v.is_empty())?;
            Some(format!("--{name}={value}"))
        })
        .collect()
}

/// The environment variable of flag `name`: `HEDGEHOG_` and the name in capitals,
/// `-` as `_`.
pub fn env_name(name: &str) -> String {
    format!("HEDGEHOG_{}", name.to_ascii_uppercase().replace('-', "_"))
}

fn check_config_args(args: &[&str]) -> Result<Command, String> {
    match args {
        [file] if !file.starts_with('-') => Ok(Command::CheckConfig(PathBuf::from(file))),
        _ => Err("usage: hedgehog check-config FILE".into()),
    }
}

/// The relay's flags that take a value.
pub(crate) const SERVE_FLAGS: &[&str] = &[
    "config",
    "host",
    "port",
    "node",
    "upstream-url",
    "upstream-ca",
    "channels",
    "stall-timeout",
    "replay",
    "speed",
    "client-queue-bytes",
    "slow-consumer",
    "max-message-bytes",
    "ping-interval",
    "idle-timeout",
    "max-subscriptions",
    "max-connections-per-ip",
    "max-connections",
    "max-request-rate",
    "first-byte-timeout",
    "header-timeout",
    "body-timeout",
    "keepalive-timeout",
    "ready-grace",
    "history-size",
    "history-age",
    "history-bytes",
    "record",
    "record-max-file-bytes",
    "record-max-bytes",
    "metrics-addr",
    "log-format",
    "tls-cert",
    "tls-key",
    "tls-port",
    "role",
    "nats",
    "nats-creds",
    "nats-ca",
    "nats-prefix",
    "lease-ttl",
    "interest-ttl",
];

/// The simulator's flags that take a value.
const SIMULATE_FLAGS: &[&str] = &[
    "host",
    "port",
    "cert-out",
    "products",
    "rate",
    "seed",
    "replay",
    "speed",
    "subscribe-timeout",
    "hold",
    "fault",
    "fault-every",
    "fault-for",
];

/// `--name value`, `--name=value` and boolean `--name` flags.
struct Flags<'a> {
    pairs: Vec<(&'a str, Option<&'a str>)>,
    used: Vec<bool>,
}

impl<'a> Flags<'a> {
    /// `booleans` take no value and `values` take one; anything else is unknown.
    fn parse(args: &[&'a str], booleans: &[&str], values: &[&str]) -> Result<Self, String> {
        let mut pairs = Vec::new();
        let mut i = 0;
        while i < args.len() {
            let Some(flag) = args[i].strip_prefix("--") else {
                return Err(format!("unexpected argument {:?} (try --help)", args[i]));
            };
            if let Some((name, value)) = flag.split_once('=') {
                pairs.push((name, Some(value)));
            } else if booleans.contains(&flag) {
                pairs.push((flag, None));
            } else if !values.contains(&flag) {
                return Err(format!("unknown option --{flag} (try --help)"));
            } else {
                let value = args.get(i + 1).ok_or_else(|| format!("--{flag} needs a value"))?;
                pairs.push((flag, Some(*value)));
                i += 1;
            }
            i += 1;
        }
        let used = vec![false; pairs.len()];
        Ok(Flags { pairs, used })
    }

    /// The last value given for `name` (a flag given twice, as from the
    /// environment and on the command line, takes the later).
    fn get(&mut self, name: &str) -> Option<&'a str> {
        let i = self.pairs.iter().rposition(|(n, _)| *n == name)?;
        for (used, (n, _)) in self.used.iter_mut().zip(&self.pairs) {
            *used |= *n == name;
        }
        self.pairs[i].1.or(Some(""))
    }

    fn flag(&mut self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// A switch: `--name` or `--name=true` is on, `--name=false` off (to turn
    /// off what the config file turned on), absent is `None`.
    fn switch(&mut self, name: &str) -> Result<Option<bool>, String> {
        match self.get(name) {
            None => Ok(None),
            Some("" | "true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(v) => Err(format!("--{name}={v}: use --{name}, --{name}=true or --{name}=false")),
        }
    }

    fn parsed<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>, String> {
        self.get(name).map(|v| v.parse().map_err(|_| format!("--{name}: {v:?} is not valid"))).transpose()
    }

    /// Errors on any flag nobody asked for.
    fn finish(self) -> Result<(), String> {
        match self.used.iter().position(|u| !u) {
            Some(i) => Err(format!("unknown option --{} (try --help)", self.pairs[i].0)),
            None => Ok(()),
        }
    }
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_string).collect()
}

fn seconds(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v).map_err(|_| format!("--{name}: {v} is not a duration in seconds"))
}

fn simulate(mut f: Flags) -> Result<SimConfig, String> {
    let mut c = SimConfig::default();
    if let Some(h) = f.get("host") {
        c.host = h.to_string();
    }
    c.port = f.parsed("port")?.unwrap_or(c.port);
    c.tls = f.flag("tls");
    c.cert_out = f.get("cert-out").map(PathBuf::from);
    if let Some(p) = f.get("products") {
        c.products = list(p);
    }
    c.rate = f.parsed("rate")?.unwrap_or(c.rate);
    c.seed = f.parsed("seed")?;
    c.replay = f.get("replay").map(PathBuf::from);
    c.speed = f.parsed("speed")?.unwrap_or(c.speed);
    c.looping = f.flag("loop");
    if let Some(s) = f.parsed::<f64>("subscribe-timeout")? {
        c.subscribe_timeout = seconds("subscribe-timeout", s)?;
    }
    if let Some(s) = f.parsed::<f64>("hold")? {
        c.hold = seconds("hold", s)?;
    }
    if let Some(list) = f.get("fault") {
        c.faults = list.split(',').filter(|k| !k.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    }
    if let Some(s) = f.parsed::<f64>("fault-every")? {
        c.fault_every = seconds("fault-every", s)?;
    }
    if let Some(s) = f.parsed::<f64>("fault-for")? {
        c.fault_for = seconds("fault-for", s)?;
    }
    f.finish()?;
    validate_sim(c)
}

fn validate_sim(c: SimConfig) -> Result<SimConfig, String> {
    if !(c.rate.is_finite() && (0.0..=1_000_000.0).contains(&c.rate)) {
        return Err(format!("--rate {} must be between 0 and 1000000", c.rate));
    }
    check_speed(c.speed)?;
    if c.looping && c.replay.is_none() {
        return Err("--loop needs --replay".into());
    }
    if c.products.is_empty() && c.replay.is_none() {
        return Err("--products is empty".into());
    }
    if let Some(bad) = c.products.iter().find(|p| crate::protocol::normalize_product(p).is_none()) {
        return Err(format!("--products: {bad:?} is not a product id (want BASE-QUOTE)"));
    }
    if !c.faults.is_empty() && c.fault_every.is_zero() {
        return Err("--fault-every must be more than 0".into());
    }
    if c.cert_out.is_some() && !c.tls {
        return Err("--cert-out needs --tls".into());
    }
    Ok(c)
}

/// `--role`, `--nats` and their companions, checked together.
fn cluster(f: &mut Flags, c: &mut ServeConfig) -> Result<(), String> {
    use crate::cluster::Role;
    if let Some(r) = f.get("role") {
        c.role = Role::parse(r)?;
    }
    let k = &mut c.cluster;
    if let Some(urls) = f.get("nats") {
        k.urls = list(urls);
    }
    if let Some(p) = f.get("nats-creds") {
        k.creds = Some(PathBuf::from(p));
    }
    if let Some(p) = f.get("nats-ca") {
        k.ca = Some(PathBuf::from(p));
    }
    if let Some(p) = f.get("nats-prefix") {
        if !crate::cluster::is_token(p) {
            return Err(format!("--nats-prefix {p:?}: use 1 to 64 of A-Z, a-z, 0-9, - and _"));
        }
        k.prefix = p.to_string();
    }
    if let Some(s) = f.parsed::<f64>("lease-ttl")? {
        k.lease_ttl = seconds("lease-ttl", s)?;
        if k.lease_ttl < Duration::from_secs(2) {
            return Err("--lease-ttl must be at least 2 seconds (the lease is renewed every second)".into());
        }
    }
    if let Some(s) = f.parsed::<f64>("interest-ttl")? {
        k.interest_ttl = seconds("interest-ttl", s)?;
        if k.interest_ttl < Duration::from_secs(1) {
            return Err("--interest-ttl must be at least 1 second".into());
        }
    }
    match c.role {
        Role::All if !k.urls.is_empty() => {
            Err("--nats needs --role ingest or --role edge (one process alone uses no NATS)".into())
        }
        Role::All => Ok(()),
        role if k.urls.is_empty() => Err(format!("--role {} needs --nats URL", role.as_str())),
        role if c.node.is_none() => Err(format!("--role {} needs --node NAME (unique among the nodes)", role.as_str())),
        _ => Ok(()),
    }
}

/// A port number, for `--NAME`.
fn port(name: &str, p: &str) -> Result<u16, String> {
    p.trim().parse().map_err(|_| format!("{name} {p:?} is not a port number"))
}

/// `--tls-cert` and `--tls-key` over what the file set (`file`): both or neither.
pub(crate) fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    file: Option<TlsFiles>,
) -> Result<Option<TlsFiles>, String> {
    // The file's half-pair is kept with an empty path for the missing half.
    let set = |p: PathBuf| Some(p).filter(|p| !p.as_os_str().is_empty());
    let (file_cert, file_key) = file.map_or((None, None), |f| (set(f.cert), set(f.key)));
    match (cert.or(file_cert), key.or(file_key)) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => Err("--tls-cert needs --tls-key (the certificate's private key)".into()),
        (None, Some(_)) => Err("--tls-key needs --tls-cert (the certificate chain)".into()),
    }
}

/// A `--metrics-addr`: `host:port` (`[::1]:9100` for IPv6).
pub(crate) fn metrics_addr(a: &str) -> Result<std::net::SocketAddr, String> {
    a.trim().parse().map_err(|_| format!("--metrics-addr {a:?} is not an address (host:port, e.g. 127.0.0.1:9100)"))
}

fn serve(mut f: Flags, env: &dyn Fn(&str) -> Option<String>) -> Result<ServeConfig, String> {
    let mut c = ServeConfig::default();
    let path = f.get("config").map(str::to_string).or_else(|| env("HEDGEHOG_CONFIG").filter(|p| !p.is_empty()));
    let file = path.map(|p| ConfigFile::load(p.as_ref())).transpose()?;
    if let Some(file) = &file {
        file.apply(&mut c)?;
        c.config_file = Some(file.path().to_path_buf());
        c.access = file.access.clone();
    }
    if let Some(h) = f.get("host").map(str::to_string).or_else(|| env("HOST")) {
        c.host = h;
    }
    if let Some(p) = f.get("port").map(str::to_string).or_else(|| env("PORT")) {
        c.port = port("port", &p)?;
    }
    if let Some(n) = f.get("node").map(str::to_string).or_else(|| env("HEDGEHOG_NODE").filter(|n| !n.is_empty())) {
        c.node = Some(crate::hub::Node::parse(&n)?);
    }
    if let Some(n) = env("WEB_CONCURRENCY") {
        c.shards = parse_shards(&n)?;
    }
    if let Some(u) = f.get("upstream-url").map(str::to_string).or_else(|| env("COINBASE_WS_URL")) {
        c.upstream.url = u;
    }
    if let Some(ca) = f.get("upstream-ca").map(str::to_string).or_else(|| env("COINBASE_CA_FILE")) {
        c.upstream.ca_file = Some(PathBuf::from(ca));
    }
    if let Some(a) = f.get("metrics-addr").map(str::to_string).or_else(|| env("HEDGEHOG_METRICS_ADDR")) {
        c.metrics_addr = Some(metrics_addr(&a)?);
    }
    let cert = f.get("tls-cert").map(PathBuf::from).or_else(|| env("HEDGEHOG_TLS_CERT").map(PathBuf::from));
    let key = f.get("tls-key").map(PathBuf::from).or_else(|| env("HEDGEHOG_TLS_KEY").map(PathBuf::from));
    c.tls = tls_files(cert, key, c.tls.take())?;
    if let Some(p) = f.get("tls-port").map(str::to_string).or_else(|| env("HEDGEHOG_TLS_PORT")) {
        c.tls_port = Some(port("tls-port", &p)?);
    }
    if c.tls_port.is_some() && c.tls.is_none() {
        return Err("--tls-port needs --tls-cert and --tls-key".into());
    }
    if c.tls_port.is_some_and(|p| p != 0 && p == c.port) {
        return Err(format!("--tls-port {} is --port too: give TLS a port of its own, or drop --tls-port", c.port));
    }
    if let Some(ch) = f.get("channels").map(str::to_string).or_else(|| env("COINBASE_CHANNELS")) {
        c.channels = list(&ch).iter().map(|name| relayed_channel(name)).collect::<Result<_, _>>()?;
    }
    if let Some(s) = f.parsed::<f64>("stall-timeout")? {
        c.upstream.stall_timeout = seconds("stall-timeout", s)?;
    }
    c.simulate = f.switch("simulate")?.unwrap_or(c.simulate);
    if let Some(r) = f.get("replay") {
        c.replay = Some(PathBuf::from(r));
    }
    let speed = f.parsed::<f64>("speed")?;
    c.replay_loop = f.switch("loop")?.unwrap_or(c.replay_loop);
    let paced = speed.is_some() || file.as_ref().is_some_and(ConfigFile::sets_replay_pacing);
    if (paced || c.replay_loop) && c.replay.is_none() {
        return Err(format!("--{} needs --replay", if c.replay_loop { "loop" } else { "speed" }));
    }
    c.replay_speed = speed.unwrap_or(c.replay_speed);
    if let Some(n) = f.parsed::<usize>("client-queue-bytes")? {
        c.client_queue_bytes = n;
    }
    if let Some(n) = f.parsed::<usize>("max-message-bytes")? {
        c.max_message_bytes = n;
    }
    if let Some(s) = f.parsed::<f64>("ping-interval")? {
        c.ping_interval = seconds("ping-interval", s)?;
    }
    if let Some(s) = f.parsed::<f64>("idle-timeout")? {
        c.idle_timeout = seconds("idle-timeout", s)?;
    }
    if let Some(n) = f.parsed::<usize>("max-subscriptions")? {
        c.max_subscriptions = n;
    }
    if let Some(n) = f.parsed::<usize>("max-connections-per-ip")? {
        c.max_connections_per_ip = n;
    }
    if let Some(n) = f.parsed::<usize>("max-connections")? {
        c.max_connections = n;
    }
    for (name, field) in [
        ("first-byte-timeout", &mut c.first_byte_timeout),
        ("header-timeout", &mut c.header_timeout),
        ("body-timeout", &mut c.body_timeout),
        ("keepalive-timeout", &mut c.keepalive_timeout),
        ("ready-grace", &mut c.ready_grace),
    ] {
        if let Some(s) = f.parsed::<f64>(name)? {
            *field = seconds(name, s)?;
        }
    }
    if let Some(n) = f.parsed::<u32>("max-request-rate")? {
        c.max_request_rate = n;
    }
    c.echo = f.switch("echo")?.unwrap_or(c.echo);
    if let Some(n) = f.parsed::<usize>("history-size")? {
        c.history_size = n;
    }
    if let Some(s) = f.parsed::<f64>("history-age")? {
        c.history_age = seconds("history-age", s)?;
    }
    if let Some(n) = f.parsed::<usize>("history-bytes")? {
        c.history_bytes = n;
    }
    if let Some(p) = f.get("slow-consumer") {
        c.slow_consumer = slow_policy(p)?;
    }
    c.record = record(&mut f, env, file.as_ref())?;
    cluster(&mut f, &mut c)?;
    if let Some(v) = f.get("log-format").map(str::to_string).or_else(|| env("HEDGEHOG_LOG_FORMAT")) {
        c.log_format = v.parse()?;
    }
    f.finish()?;
    validate_serve(c)
}

fn slow_policy(p: &str) -> Result<SlowPolicy, String> {
    match p {
        "disconnect" => Ok(SlowPolicy::Disconnect),
        "conflate" => Ok(SlowPolicy::Conflate),
        other => Err(format!("--slow-consumer {other:?}: use disconnect or conflate")),
    }
}

/// Reads `WEB_CONCURRENCY`: a whole number from 1 to [`MAX_SHARDS`].
pub fn parse_shards(v: &str) -> Result<usize, String> {
    match v.trim().parse::<i64>() {
        Ok(n) if (1..=MAX_SHARDS as i64).contains(&n) => Ok(n as usize),
        Ok(n) => Err(format!("WEB_CONCURRENCY={n} is out of range: use 1 to {MAX_SHARDS}")),
        Err(_) => Err(format!("WEB_CONCURRENCY={v:?} is not a whole number")),
    }
}

fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_SHARDS)
}

fn validate_serve(c: ServeConfig) -> Result<ServeConfig, String> {
    crate::upstream::Endpoint::parse(&c.upstream.url)?;
    check_speed(c.replay_speed)?;
    if c.simulate && c.replay.is_some() {
        return Err("--simulate and --replay: choose one".into());
    }
    if c.channels.is_empty() {
        return Err("--channels is empty".into());
    }
    if c.client_queue_bytes < 64 * 1024 {
        return Err(format!("--client-queue-bytes {} is too small: at least 65536", c.client_queue_bytes));
    }
    if c.max_connections == 0 || c.max_connections_per_ip == 0 {
        return Err("--max-connections and --max-connections-per-ip must be at least 1".into());
    }
    let deadlines = [
        ("first-byte-timeout", c.first_byte_timeout),
        ("header-timeout", c.header_timeout),
        ("body-timeout", c.body_timeout),
        ("keepalive-timeout", c.keepalive_timeout),
    ];
    if let Some((name, _)) = deadlines.iter().find(|(_, d)| d.is_zero()) {
        return Err(format!("--{name} must be more than 0"));
    }
    if let Some(ca) = &c.upstream.ca_file {
        if !ca.is_file() {
            return Err(format!("--upstream-ca: {} is not a readable file", ca.display()));
        }
    }
    Ok(c)
}

/// `--record DIR` (or `HEDGEHOG_RECORD_DIR`, ignored when empty, or the file's
/// `record`) and its sizes. Whether DIR can be written is found out at start
/// (`record::Recorder::start`).
fn record(
    f: &mut Flags,
    env: &dyn Fn(&str) -> Option<String>,
    file: Option<&ConfigFile>,
) -> Result<Option<Box<RecordConfig>>, String> {
    let dir = f.get("record").map(str::to_string).or_else(|| env(crate::record::ENV_DIR).filter(|d| !d.is_empty()));
    let (file_bytes, max_bytes) = (f.parsed::<u64>("record-max-file-bytes")?, f.parsed::<u64>("record-max-bytes")?);
    let none = file::ServerFile::default();
    record_of(dir, file_bytes, max_bytes, file.map_or(&none, |f| &f.server))
}

/// The recording settings: those given (flags, environment) over the file's.
fn record_of(
    dir: Option<String>,
    file_bytes: Option<u64>,
    max_bytes: Option<u64>,
    from_file: &file::ServerFile,
) -> Result<Option<Box<RecordConfig>>, String> {
    let dir = dir.or_else(|| from_file.record.as_ref().map(|d| d.display().to_string()));
    let file_bytes = file_bytes.or(from_file.record_max_file_bytes);
    let max_bytes = max_bytes.or(from_file.record_max_bytes);
    let Some(dir) = dir else {
        return match file_bytes.or(max_bytes) {
            Some(_) => Err("--record-max-file-bytes and --record-max-bytes need --record DIR".into()),
            None => Ok(None),
        };
    };
    if dir.is_empty() {
        return Err("--record needs a directory".into());
    }
    let mut r = RecordConfig::new(dir.into());
    r.max_file_bytes = file_bytes.unwrap_or(r.max_file_bytes);
    r.max_bytes = max_bytes.unwrap_or(r.max_bytes);
    if r.max_file_bytes < 4096 {
        return Err(format!("--record-max-file-bytes {} is too small: at least 4096", r.max_file_bytes));
    }
    // Checked: twice a huge --record-max-file-bytes would wrap to a small number.
    if r.max_file_bytes.checked_mul(2).is_none_or(|twice| r.max_bytes < twice) {
        let (max, file) = (r.max_bytes, r.max_file_bytes);
        return Err(format!("--record-max-bytes {max} must be at least twice --record-max-file-bytes ({file})"));
    }
    Ok(Some(Box::new(r)))
}

fn check_speed(speed: f64) -> Result<(), String> {
    match speed.is_finite() && speed >= 0.0 {
        true => Ok(()),
        false => Err(format!("--speed {speed} must be 0 or more")),
    }
}

/// A channel named in `--channels`: one hedgehog relays.
fn relayed_channel(name: &str) -> Result<Channel, String> {
    Channel::parse(name)
        .filter(|c| c.is_relayed())
        .ok_or_else(|| format!("--channels: {name:?} is not a channel hedgehog relays ({})", Channel::relayed_names()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(line: &str, env: &[(&str, &str)]) -> Result<Command, String> {
        let args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse(&args, &move |k| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    fn serve_cfg(line: &str, env: &[(&str, &str)]) -> ServeConfig {
        match run(line, env).unwrap() {
            Command::Serve(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn roles_need_nats_and_a_node_and_one_process_needs_neither() {
        use crate::cluster::Role;
        let c = serve_cfg("", &[]);
        assert_eq!((c.role, c.cluster.urls.len()), (Role::All, 0));
        let c = serve_cfg("--role edge --node a --nats nats://127.0.0.1:4222,nats://127.0.0.1:4223", &[]);
        assert_eq!((c.role, c.cluster.urls.len(), c.cluster.prefix.as_str()), (Role::Edge, 2, "hedgehog"));
        let c = serve_cfg("--node i", &[("HEDGEHOG_ROLE", "ingest"), ("HEDGEHOG_NATS", "nats://n:4222")]);
        assert_eq!(c.role, Role::Ingest, "from the environment");
        let c = serve_cfg("--role edge --node a --nats nats://n --lease-ttl 5 --interest-ttl 2", &[]);
        assert_eq!((c.cluster.lease_ttl.as_secs(), c.cluster.interest_ttl.as_secs()), (5, 2));
        for (line, says) in [
            ("--role edge --node a", "--role edge needs --nats URL"),
            ("--role ingest --nats nats://n", "--role ingest needs --node NAME"),
            ("--nats nats://n", "--nats needs --role ingest or --role edge"),
            ("--role hub", "--role \"hub\": use all, ingest or edge"),
            ("--role edge --node a --nats nats://n --nats-prefix a.b", "--nats-prefix \"a.b\""),
            ("--role edge --node a --nats nats://n --lease-ttl 1", "--lease-ttl must be at least 2 seconds"),
        ] {
            let e = run(line, &[]).unwrap_err();
            assert!(e.starts_with(says) && !e.contains('\n'), "{line}: {e}");
        }
    }

    #[test]
    fn defaults_then_env_then_flags() {
        let c = serve_cfg("", &[]);
        assert_eq!(
            (c.host.as_str(), c.port, c.upstream.url.as_str()),
            ("0.0.0.0", 8080, crate::upstream::COINBASE_URL)
        );
        assert_eq!(c.channels, [Channel::Ticker, Channel::Matches]);
        let c = serve_cfg("", &[("PORT", "9000"), ("WEB_CONCURRENCY", "3"), ("COINBASE_CHANNELS", "ticker,level2_50")]);
        assert_eq!((c.port, c.shards), (9000, 3));
        assert_eq!(c.channels, [Channel::Ticker, Channel::Level2Batch]);
        let c = serve_cfg("serve --port 7000 --upstream-url=ws://127.0.0.1:1 --simulate", &[("PORT", "9000")]);
        assert_eq!((c.port, c.upstream.url.as_str(), c.simulate), (7000, "ws://127.0.0.1:1", true));
    }

    #[test]
    fn every_relay_flag_also_comes_from_the_environment() {
        let c = serve_cfg(
            "",
            &[
                ("HEDGEHOG_MAX_SUBSCRIPTIONS", "7"),
                ("HEDGEHOG_IDLE_TIMEOUT", "30"),
                ("HEDGEHOG_SIMULATE", "true"),
                ("HEDGEHOG_UPSTREAM_URL", "ws://127.0.0.1:9"),
                ("HEDGEHOG_HISTORY_SIZE", ""),
            ],
        );
        assert_eq!((c.max_subscriptions, c.idle_timeout, c.simulate), (7, Duration::from_secs(30), true));
        assert_eq!(
            (c.upstream.url.as_str(), c.history_size),
            ("ws://127.0.0.1:9", ServeConfig::default().history_size)
        );
        // The command line wins; a bad value names the flag.
        let c = serve_cfg(
            "--max-subscriptions 9 --simulate=false",
            &[("HEDGEHOG_MAX_SUBSCRIPTIONS", "7"), ("HEDGEHOG_SIMULATE", "true")],
        );
        assert_eq!((c.max_subscriptions, c.simulate), (9, false));
        assert!(run("", &[("HEDGEHOG_MAX_SUBSCRIPTIONS", "many")]).unwrap_err().contains("--max-subscriptions"));
        assert_eq!(env_name("record-max-file-bytes"), "HEDGEHOG_RECORD_MAX_FILE_BYTES");
        // Every flag of the usage text has its variable named there or is mapped.
        for name in SERVE_FLAGS.iter().chain(SERVE_SWITCHES) {
            assert!(USAGE.contains(&format!("--{name}")), "--{name} is in the usage text");
        }
    }

    #[test]
    fn tls_takes_both_files_from_flags_env_or_the_file() {
        let files = |c: &str, k: &str| Some(TlsFiles { cert: c.into(), key: k.into() });
        assert_eq!(serve_cfg("", &[]).tls, None);
        assert_eq!(serve_cfg("--tls-cert c.pem --tls-key k.pem", &[]).tls, files("c.pem", "k.pem"));
        let env = [("HEDGEHOG_TLS_CERT", "e.pem"), ("HEDGEHOG_TLS_KEY", "ek.pem")];
        assert_eq!(serve_cfg("--tls-key k.pem", &env).tls, files("e.pem", "k.pem"));
        assert_eq!(
            run("--tls-cert c.pem", &[]).unwrap_err(),
            "--tls-cert needs --tls-key (the certificate's private key)"
        );
        assert!(run("--tls-key k.pem", &[]).unwrap_err().starts_with("--tls-key needs --tls-cert"));
        let c = serve_cfg("--tls-cert c.pem --tls-key k.pem --tls-port 8443", &[]);
        assert_eq!((c.port, c.tls_port), (8080, Some(8443)));
        assert_eq!(run("--tls-port 8443", &[]).unwrap_err(), "--tls-port needs --tls-cert and --tls-key");
        assert!(run("--tls-cert c --tls-key k --tls-port 8080", &[]).unwrap_err().contains("is --port too"));
        // The file's half is completed by a flag; a half alone is refused.
        let path = std::env::temp_dir().join(format!("hedgehog-tls-config-{}.toml", std::process::id()));
        std::fs::write(&path, "[server]\ntls_cert = \"/etc/hh/cert.pem\"\n").unwrap();
        let config = format!("--config {}", path.display());
        assert_eq!(serve_cfg(&format!("{config} --tls-key k.pem"), &[]).tls, files("/etc/hh/cert.pem", "k.pem"));
        assert!(run(&config, &[]).unwrap_err().starts_with("--tls-cert needs --tls-key"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn connection_limits_derive_from_the_file_limit() {
        assert_eq!((default_max_per_ip(20_000), default_max_connections(20_000)), (5_000, 19_000));
        assert_eq!((default_max_per_ip(1024), default_max_connections(1024)), (256, 960));
        let c = serve_cfg("--max-connections 50 --header-timeout 2.5 --keepalive-timeout=30", &[]);
        assert_eq!(c.max_connections, 50);
        assert_eq!((c.header_timeout, c.keepalive_timeout), (Duration::from_millis(2500), Duration::from_secs(30)));
    }

    #[test]
    fn web_concurrency_must_be_sane() {
        for bad in ["0", "-1", "two", "1.5", "100000", ""] {
            let e = run("", &[("WEB_CONCURRENCY", bad)]).unwrap_err();
            assert!(e.starts_with("WEB_CONCURRENCY="), "{e}");
            assert!(!e.contains('\n'));
        }
        assert_eq!(parse_shards(" 4 "), Ok(4));
    }

    #[test]
    fn simulator_flags() {
        let Command::Simulate(c) =
            run("simulate --port 0 --tls --cert-out /tmp/x.pem --products btc-usd,ETH-EUR --rate 100 --seed 7", &[])
                .unwrap()
        else {
            panic!()
        };
        assert_eq!((c.port, c.tls, c.rate, c.seed), (0, true, 100.0, Some(7)));
        assert_eq!(c.products, ["btc-usd", "ETH-EUR"]);
        let Command::Simulate(c) = run("simulate --replay cap.gz --speed 0 --loop", &[]).unwrap() else { panic!() };
        assert_eq!((c.replay, c.speed, c.looping), (Some(PathBuf::from("cap.gz")), 0.0, true));
    }

    #[test]
    fn replay_flags_of_the_relay() {
        let c = serve_cfg("--replay /tmp/cap.jsonl --speed 2.5 --loop", &[]);
        assert_eq!((c.replay, c.replay_speed, c.replay_loop), (Some(PathBuf::from("/tmp/cap.jsonl")), 2.5, true));
        let c = serve_cfg("--replay=cap", &[]);
        assert_eq!((c.replay_speed, c.replay_loop, c.simulate), (1.0, false, false));
    }

    #[test]
    fn mistakes_are_one_line_errors() {
        for (line, want) in [
            ("simulate --rate fast", "--rate"),
            ("simulate --products BTC", "not a product id"),
            ("simulate --cert-out x", "needs --tls"),
            ("--bogus 1", "unknown option --bogus"),
            ("--bogus", "unknown option --bogus"),
            ("simulate --fault-forever 1", "unknown option --fault-forever"),
            ("--header-timeout 0", "--header-timeout must be more than 0"),
            ("--max-connections 0", "at least 1"),
            ("launch", "unknown command"),
            ("--port", "needs a value"),
            ("--upstream-url http://x", "ws:// or wss://"),
            ("--channels full", "not a channel"),
            ("--speed 2", "--speed needs --replay"),
            ("--loop", "--loop needs --replay"),
            ("--replay x --speed -1", "--speed -1 must be 0 or more"),
            ("--replay x --simulate", "choose one"),
            ("simulate --loop", "--loop needs --replay"),
            ("simulate --replay x --speed nan", "must be 0 or more"),
        ] {
            let e = run(line, &[]).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{line}: {e}");
        }
        assert_eq!(run("simulate --help", &[]), Ok(Command::Help));
    }

    /// Writes `text` to a fresh file and returns its path.
    fn config_file(text: &str) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("hedgehog-config-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn flags_then_env_then_file_then_defaults() {
        let file = config_file(
            "[server]\nport = 7000\nshards = 2\nchannels = [\"matches\"]\nstall_timeout = 2\nheader_timeout = 1.5\n",
        );
        let flag = format!("--config {file}");
        let c = serve_cfg(&format!("{flag} --port 6000"), &[("PORT", "9000")]);
        assert_eq!(c.port, 6000, "a flag beats the environment and the file");
        let c = serve_cfg(&flag, &[("PORT", "9000"), ("WEB_CONCURRENCY", "3")]);
        assert_eq!((c.port, c.shards), (9000, 3), "the environment beats the file");
        let c = serve_cfg(&flag, &[]);
        assert_eq!(
            (c.port, c.shards, c.channels.as_slice()),
            (7000, 2, &[Channel::Matches][..]),
            "the file beats defaults"
        );
        assert_eq!((c.upstream.stall_timeout, c.header_timeout), (Duration::from_secs(2), Duration::from_millis(1500)));
        assert_eq!(
            (c.host.as_str(), c.max_request_rate),
            ("0.0.0.0", 20_000),
            "what the file leaves out keeps its default"
        );
        assert_eq!(c.config_file, Some(PathBuf::from(&file)));
        assert_eq!(c.access, None, "no classes: access control off");
        let c = serve_cfg("", &[("HEDGEHOG_CONFIG", &file), ("COINBASE_CHANNELS", "ticker")]);
        assert_eq!((c.port, c.channels.as_slice()), (7000, &[Channel::Ticker][..]), "HEDGEHOG_CONFIG names the file");
        let other = config_file("[server]\nport = 7001\n");
        assert_eq!(serve_cfg(&format!("--config {other}"), &[("HEDGEHOG_CONFIG", &file)]).port, 7001);
        assert_eq!(serve_cfg("", &[("HEDGEHOG_CONFIG", "")]).config_file, None);
    }

    #[test]
    fn switches_and_recording_from_the_file() {
        let file = config_file(
            "[server]\nsimulate = true\necho = true\nslow_consumer = \"conflate\"\nrecord = \"/tmp/r\"\nrecord_max_file_bytes = 8192\n",
        );
        let c = serve_cfg(&format!("--config {file}"), &[]);
        assert_eq!((c.simulate, c.echo, c.slow_consumer), (true, true, SlowPolicy::Conflate));
        let r = c.record.unwrap();
        assert_eq!((r.dir, r.max_file_bytes), (PathBuf::from("/tmp/r"), 8192));
        let c = serve_cfg(&format!("--config {file} --simulate=false --slow-consumer disconnect --record /tmp/s"), &[]);
        assert_eq!((c.simulate, c.echo, c.slow_consumer), (false, true, SlowPolicy::Disconnect));
        assert_eq!(c.record.unwrap().dir, PathBuf::from("/tmp/s"));
        let rules = config_file("[classes.anonymous]\nallow = [\"BTC-USD\"]\n");
        let c = serve_cfg(&format!("--config {rules}"), &[]);
        assert_eq!(c.access.unwrap().classes().map(|c| c.name().to_string()).collect::<Vec<_>>(), ["anonymous"]);
    }

    #[test]
    fn a_bad_file_is_one_line_naming_its_line() {
        for (text, want) in [
            ("[server]\nport = 1\nbogus = 2\n", ":3: unknown key `bogus`"),
            ("[server]\nmax-connections = 2\n", ":2: unknown key `max-connections` (write `max_connections`)"),
            ("port = 8080\n", ":1: unknown key `port` (settings go under [server])"),
            ("[server]\n\nport = \"http\"\n", ":3: invalid type: string \"http\", expected u16"),
            ("[server]\nport = 70000\n", ":2: "),
            ("[server]\nchannels = [\n\"ticker\",\n\"full\"]\n", ":4: channels: \"full\" is not a channel"),
            ("[server]\nslow_consumer = \"drop\"\n", ":2: slow-consumer \"drop\": use disconnect or conflate"),
            ("[server]\nshards = 0\n", ":2: shards=0 is out of range"),
            ("[server]\nidle_timeout = -1\n", ":2: idle_timeout: -1 is not a duration"),
            ("[server]\nport = 1\n[server]\n", ":3: "),
        ] {
            let file = config_file(text);
            let e = run(&format!("--config {file}"), &[]).unwrap_err();
            assert!(e.starts_with(&file) && e.contains(want) && !e.contains('\n'), "{text:?}: {e}");
        }
        let e = run("--config /nonexistent/hh.toml", &[]).unwrap_err();
        assert!(e.starts_with("--config /nonexistent/hh.toml: ") && !e.contains('\n'), "{e}");
        let e = run(&format!("--config {}", config_file("[server]\nloop = true\n")), &[]).unwrap_err();
        assert_eq!(e, "--loop needs --replay");
        assert_eq!(
            run("--simulate=maybe", &[]).unwrap_err(),
            "--simulate=maybe: use --simulate, --simulate=true or --simulate=false"
        );
    }

    #[test]
    fn the_commands_of_access_control() {
        assert_eq!(run("hash-key", &[]), Ok(Command::HashKey));
        assert!(run("hash-key now", &[]).is_err());
        assert_eq!(run("check-config x.toml", &[]), Ok(Command::CheckConfig(PathBuf::from("x.toml"))));
        assert_eq!(run("check-config", &[]).unwrap_err(), "usage: hedgehog check-config FILE");
        let report = check_config(config_file("[server]\nport = 1\n").as_ref()).unwrap();
        assert!(report.contains("access control: off"), "{report}");
        let e = check_config(config_file("[server]\nclient_queue_bytes = 10\n").as_ref()).unwrap_err();
        assert!(e.contains("--client-queue-bytes 10 is too small"), "{e}");
    }

    #[test]
    fn recording_from_flags_or_environment() {
        assert_eq!(serve_cfg("", &[]).record, None);
        assert_eq!(serve_cfg("", &[("HEDGEHOG_RECORD_DIR", "")]).record, None);
        let r = serve_cfg("", &[("HEDGEHOG_RECORD_DIR", "/var/rec")]).record.unwrap();
        assert_eq!((r.dir, r.max_file_bytes, r.max_bytes), (PathBuf::from("/var/rec"), 256 << 20, 4 << 30));
        let line = "--record /tmp/r --record-max-file-bytes 8192 --record-max-bytes=65536";
        let r = serve_cfg(line, &[("HEDGEHOG_RECORD_DIR", "/var/rec")]).record.unwrap();
        assert_eq!((r.dir, r.max_file_bytes, r.max_bytes), (PathBuf::from("/tmp/r"), 8192, 65536));
        for (line, want) in [
            ("--record-max-bytes 100000", "need --record DIR"),
            ("--record=", "needs a directory"),
            ("--record /tmp/r --record-max-file-bytes 100", "at least 4096"),
            ("--record /tmp/r --record-max-file-bytes 8192 --record-max-bytes 10000", "at least twice"),
            ("--record /tmp/r --record-max-bytes 1G", "--record-max-bytes"),
            // Twice this is past u64::MAX: refused, not wrapped to a small number.
            ("--record /tmp/r --record-max-file-bytes 9223372036854775808", "at least twice"),
            (
                "--record /tmp/r --record-max-file-bytes 9223372036854775808 --record-max-bytes 18446744073709551615",
                "at least twice",
            ),
        ] {
            let e = run(line, &[]).unwrap_err();
            assert!(e.contains(want) && !e.contains('\n'), "{line}: {e}");
        }
    }

    #[test]
    fn the_log_format_from_flag_environment_or_file() {
        assert_eq!(serve_cfg("", &[]).log_format, LogFormat::Text);
        assert_eq!(serve_cfg("--log-format json", &[]).log_format, LogFormat::Json);
        assert_eq!(serve_cfg("", &[("HEDGEHOG_LOG_FORMAT", "json")]).log_format, LogFormat::Json);
        let file = config_file("[server]\nlog_format = \"json\"\n");
        assert_eq!(serve_cfg(&format!("--config {file}"), &[]).log_format, LogFormat::Json);
        let c = serve_cfg(&format!("--config {file} --log-format=text"), &[("HEDGEHOG_LOG_FORMAT", "json")]);
        assert_eq!(c.log_format, LogFormat::Text, "a flag beats the environment and the file");
        assert_eq!(run("--log-format xml", &[]).unwrap_err(), "--log-format \"xml\": use text or json");
        let e = run(&format!("--config {}", config_file("[server]\nlog_format = \"xml\"\n")), &[]).unwrap_err();
        assert!(e.ends_with(":2: log-format \"xml\": use text or json"), "{e}");
    }

    #[test]
    fn the_node_from_flag_environment_or_file() {
        let name = |c: ServeConfig| c.node.map(|n| n.to_string());
        assert_eq!(name(serve_cfg("", &[])), None);
        assert_eq!(name(serve_cfg("", &[("HEDGEHOG_NODE", "")])), None, "an empty variable is no node");
        assert_eq!(name(serve_cfg("--node a", &[])).as_deref(), Some("a"));
        assert_eq!(name(serve_cfg("", &[("HEDGEHOG_NODE", "eu_1")])).as_deref(), Some("eu_1"));
        let file = config_file("[server]\nnode = \"b\"\n");
        assert_eq!(name(serve_cfg(&format!("--config {file}"), &[])).as_deref(), Some("b"));
        let c = serve_cfg(&format!("--config {file} --node=c"), &[("HEDGEHOG_NODE", "d")]);
        assert_eq!(name(c).as_deref(), Some("c"), "a flag beats the environment and the file");
        for bad in ["--node A", "--node a.b", "--node=", "--node abcdefghij0123456"] {
            let e = run(bad, &[]).unwrap_err();
            assert!(e.starts_with("--node ") && e.contains("1 to 16 of a-z, 0-9 and _") && !e.contains('\n'), "{e}");
        }
        let e = run(&format!("--config {}", config_file("[server]\nnode = \"a-b\"\n")), &[]).unwrap_err();
        assert!(e.contains(":2: node \"a-b\": use 1 to 16"), "{e}");
    }
}
