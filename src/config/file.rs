//! `--config FILE` (or `HEDGEHOG_CONFIG`): a TOML file with the relay's settings
//! under `[server]`, named as the flags are but with `_` for `-` (`max_connections`
//! for `--max-connections`; only that spelling), and the access rules
//! (`[classes.NAME]`, `[[keys]]`, `[tokens]`, see `access`). Unknown keys are
//! mistakes. The file's settings sit between the defaults and the environment:
//! flags > environment > file > defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

use super::ServeConfig;
use crate::access::{Access, AccessFile, ClassFile, FileText, KeyFile, TokensFile};

/// A config file, read and checked.
pub struct ConfigFile {
    pub server: ServerFile,
    /// `None`: no `[classes]`, so access control is off.
    pub access: Option<Arc<Access>>,
    path: PathBuf,
    text: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    server: ServerFile,
    #[serde(default)]
    classes: BTreeMap<Spanned<String>, ClassFile>,
    #[serde(default)]
    keys: Vec<Spanned<KeyFile>>,
    tokens: Option<Spanned<TokensFile>>,
}

/// `[server]`: every relay flag that takes a value or is a switch, and `shards`
/// for `WEB_CONCURRENCY`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    host: Option<String>,
    port: Option<u16>,
    shards: Option<Spanned<i64>>,
    upstream_url: Option<String>,
    upstream_ca: Option<PathBuf>,
    metrics_addr: Option<Spanned<String>>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_port: Option<u16>,
    channels: Option<Vec<Spanned<String>>>,
    stall_timeout: Option<Spanned<f64>>,
    simulate: Option<bool>,
    replay: Option<PathBuf>,
    speed: Option<f64>,
    #[serde(rename = "loop")]
    looping: Option<bool>,
    client_queue_bytes: Option<usize>,
    slow_consumer: Option<Spanned<String>>,
    max_message_bytes: Option<usize>,
    ping_interval: Option<Spanned<f64>>,
    idle_timeout: Option<Spanned<f64>>,
    max_subscriptions: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_connections: Option<usize>,
    first_byte_timeout: Option<Spanned<f64>>,
    header_timeout: Option<Spanned<f64>>,
    body_timeout: Option<Spanned<f64>>,
    keepalive_timeout: Option<Spanned<f64>>,
    ready_grace: Option<Spanned<f64>>,
    max_request_rate: Option<u32>,
    history_size: Option<usize>,
    history_age: Option<Spanned<f64>>,
    history_bytes: Option<usize>,
    echo: Option<bool>,
    log_format: Option<Spanned<String>>,
    pub(super) record: Option<PathBuf>,
    pub(super) record_max_file_bytes: Option<u64>,
    pub(super) record_max_bytes: Option<u64>,
}

impl ConfigFile {
    /// Reads and checks `path`: its TOML, its keys, its access rules.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--config {}: {e}", path.display()))?;
        ConfigFile::parse(path, text)
    }

    fn parse(path: &Path, text: String) -> Result<ConfigFile, String> {
        let file = FileText { path, text: &text };
        let doc: Document = toml::from_str(&text).map_err(|e| settings_hint(file.toml_error(&e)))?;
        let rules = AccessFile { classes: doc.classes, keys: doc.keys, tokens: doc.tokens };
        let access = rules.build(&file)?.map(Arc::new);
        Ok(ConfigFile { server: doc.server, access, path: path.to_path_buf(), text })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets what the file's `[server]` sets; a value it cannot take names its line.
    pub fn apply(&self, c: &mut ServeConfig) -> Result<(), String> {
        let file = FileText { path: &self.path, text: &self.text };
        let s = &self.server;
        let at = |span: std::ops::Range<usize>, e: String| file.at(span, e.trim_start_matches("--"));
        set(&mut c.host, s.host.clone());
        set(&mut c.port, s.port);
        if let Some(n) = &s.shards {
            c.shards = super::parse_shards(&n.get_ref().to_string())
                .map_err(|e| at(n.span(), e.replace("WEB_CONCURRENCY", "shards")))?;
        }
        set(&mut c.upstream.url, s.upstream_url.clone());
        c.upstream.ca_file = s.upstream_ca.clone().or(c.upstream.ca_file.take());
        if let Some(a) = &s.metrics_addr {
            c.metrics_addr = Some(super::metrics_addr(a.get_ref()).map_err(|e| at(a.span(), e))?);
        }
        if s.tls_cert.is_some() || s.tls_key.is_some() {
            // Both or neither; the flags may complete the pair, so it is checked
            // once they are read.
            let (cert, key) = (s.tls_cert.clone().unwrap_or_default(), s.tls_key.clone().unwrap_or_default());
            c.tls = Some(super::TlsFiles { cert, key });
        }
        c.tls_port = s.tls_port.or(c.tls_port);
        if let Some(list) = &s.channels {
            let one = |n: &Spanned<String>| super::relayed_channel(n.get_ref()).map_err(|e| at(n.span(), e));
            c.channels = list.iter().map(one).collect::<Result<_, _>>()?;
        }
        set(&mut c.simulate, s.simulate);
        c.replay = s.replay.clone().or(c.replay.take());
        set(&mut c.replay_speed, s.speed);
        set(&mut c.replay_loop, s.looping);
        set(&mut c.client_queue_bytes, s.client_queue_bytes);
        if let Some(p) = &s.slow_consumer {
            c.slow_consumer = super::slow_policy(p.get_ref()).map_err(|e| at(p.span(), e))?;
        }
        set(&mut c.max_message_bytes, s.max_message_bytes);
        set(&mut c.max_subscriptions, s.max_subscriptions);
        set(&mut c.max_connections_per_ip, s.max_connections_per_ip);
        set(&mut c.max_connections, s.max_connections);
        set(&mut c.max_request_rate, s.max_request_rate);
        set(&mut c.history_size, s.history_size);
        set(&mut c.history_bytes, s.history_bytes);
        set(&mut c.echo, s.echo);
        if let Some(f) = &s.log_format {
            c.log_format = f.get_ref().parse().map_err(|e| at(f.span(), e))?;
        }
        for (name, value, field) in [
            ("stall_timeout", &s.stall_timeout, &mut c.upstream.stall_timeout),
            ("ping_interval", &s.ping_interval, &mut c.ping_interval),
            ("idle_timeout", &s.idle_timeout, &mut c.idle_timeout),
            ("first_byte_timeout", &s.first_byte_timeout, &mut c.first_byte_timeout),
            ("header_timeout", &s.header_timeout, &mut c.header_timeout),
            ("body_timeout", &s.body_timeout, &mut c.body_timeout),
            ("keepalive_timeout", &s.keepalive_timeout, &mut c.keepalive_timeout),
            ("ready_grace", &s.ready_grace, &mut c.ready_grace),
            ("history_age", &s.history_age, &mut c.history_age),
        ] {
            if let Some(v) = value {
                *field = super::seconds(name, *v.get_ref()).map_err(|e| at(v.span(), e))?;
            }
        }
        Ok(())
    }

    /// Whether the file sets `speed` or `loop` (which need a replay).
    pub(super) fn sets_replay_pacing(&self) -> bool {
        self.server.speed.is_some() || self.server.looping == Some(true)
    }
}

/// `hedgehog check-config FILE`: the file read, its settings taken as the relay
/// would take them (without flags or environment), and a report of its rules.
pub fn check_config(path: &std::path::Path) -> Result<String, String> {
    let file = checked(path)?;
    Ok(match &file.access {
        Some(access) => format!("{}: ok\n{}", path.display(), access.describe()),
        None => {
            format!("{}: ok\naccess control: off (no [classes.NAME]): every client may do everything\n", path.display())
        }
    })
}

/// The access rules of `path`, read again for a reload (SIGHUP). The whole
/// file is checked as at start, so a mistake anywhere in it refuses the
/// reload; its `[server]` settings are not applied (they take effect at the
/// next start). `None`: the file has no `[classes]`.
pub fn reload_access(path: &std::path::Path) -> Result<Option<Arc<Access>>, String> {
    Ok(checked(path)?.access)
}

/// `path` read and its settings taken as the relay would take them (without
/// flags or environment).
fn checked(path: &std::path::Path) -> Result<ConfigFile, String> {
    let file = ConfigFile::load(path)?;
    let mut c = ServeConfig::default();
    file.apply(&mut c)?;
    c.record = super::record_of(None, None, None, &file.server)?;
    super::validate_serve(c)?;
    Ok(file)
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// An unknown top-level key that is a setting belongs under `[server]`.
fn settings_hint(e: String) -> String {
    let Some((_, rest)) = e.split_once("unknown key `") else { return e };
    let key = rest.split('`').next().unwrap_or("");
    let flag = key.replace('_', "-");
    let setting = flag != "config" && super::SERVE_FLAGS.contains(&flag.as_str());
    match setting || ["simulate", "loop", "echo", "shards"].contains(&key) {
        true if !e.contains("(write") => format!("{e} (settings go under [server])"),
        _ => e,
    }
}
