//! The access rules' tables in the `--config` file, as written, and their check:
//! every mistake is one line naming the file and line (`FILE:LINE: ...`).
//!
//! ```toml
//! [classes.free]                 # `anonymous` is the class of connections without credentials
//! allow = ["BTC-*", "ETH-USD"]   # pair patterns; nothing is allowed that none names
//! deny = ["*-EUR"]               # deny wins
//! allow_channels = ["ticker", "matches"]   # channel names or "*"
//! deny_channels = []
//! max_connections_per_principal = 2
//! max_connections = 1000         # the whole class
//! max_subscriptions = 20         # else --max-subscriptions
//! max_request_rate = 10          # else --max-request-rate; 0: no limit
//! history = true                 # default false
//! history_max_limit = 100        # else --history-size
//! throttle_ms = 500              # leave out for full delivery
//! admin = false
//!
//! [[keys]]
//! principal = "alice"
//! class = "free"
//! hash = "<64 hex digits from `hedgehog hash-key`>"
//!
//! [tokens]
//! hs256_secret = "<at least 32 bytes>"
//! [tokens.public_keys.KID]       # a token's `kid`
//! alg = "RS256"                  # or "EdDSA"
//! pem_file = "keys/KID.pem"      # relative to the config file's folder; or pem = "-----BEGIN..."
//! ```

use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use toml::Spanned;

use super::class::{Class, History, Limits, Tier};
use super::pattern::{ChannelPattern, PairPattern, Rules};
use super::{token, Access, ApiKey, KeyHash};

/// The shortest HS256 secret taken: as many bytes as the hash (RFC 7518 3.2).
const MIN_SECRET: usize = 32;

/// A config file's text, to name the line of a mistake.
#[derive(Debug, Clone, Copy)]
pub struct FileText<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl FileText<'_> {
    /// `FILE:LINE: what`, the line being the one where `span` starts.
    pub fn at(&self, span: Range<usize>, what: impl Display) -> String {
        let start = span.start.min(self.text.len());
        let line = self.text.as_bytes()[..start].iter().filter(|b| **b == b'\n').count() + 1;
        format!("{}:{line}: {what}", self.path.display())
    }

    /// A TOML or shape error as one line: serde's "unknown field `x`, expected
    /// one of ..." becomes "unknown key `x`", with the right spelling when it
    /// was only a `-` for a `_`.
    pub fn toml_error(&self, e: &toml::de::Error) -> String {
        let message = e.message().lines().next().unwrap_or("").trim_end();
        let message = unknown_key(message).unwrap_or_else(|| message.to_string());
        match e.span() {
            Some(span) => self.at(span, message),
            None => format!("{}: {message}", self.path.display()),
        }
    }
}

fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, expected) = rest.split_once('`')?;
    let want = key.replace('-', "_");
    match expected.contains(&format!("`{want}`")) && want != key {
        true => Some(format!("unknown key `{key}` (write `{want}`)")),
        false => Some(format!("unknown key `{key}`")),
    }
}

/// The access tables of the file, as written. (The config file's reader has
/// these three fields beside `[server]`; this type reads a file of rules alone.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    #[serde(default)]
    pub classes: BTreeMap<Spanned<String>, ClassFile>,
    #[serde(default)]
    pub keys: Vec<Spanned<KeyFile>>,
    pub tokens: Option<Spanned<TokensFile>>,
}

/// `[classes.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassFile {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow_channels: Vec<Spanned<String>>,
    #[serde(default)]
    deny_channels: Vec<Spanned<String>>,
    max_connections_per_principal: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    max_subscriptions: Option<Spanned<usize>>,
    max_request_rate: Option<u32>,
    #[serde(default)]
    history: bool,
    history_max_limit: Option<Spanned<usize>>,
    throttle_ms: Option<Spanned<u64>>,
    #[serde(default)]
    admin: bool,
}

/// `[[keys]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    principal: Spanned<String>,
    class: Spanned<String>,
    hash: Spanned<String>,
}

/// `[tokens]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    hs256_secret: Option<Spanned<String>>,
    #[serde(default)]
    public_keys: BTreeMap<String, Spanned<PublicKeyFile>>,
}

/// `[tokens.public_keys.KID]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKeyFile {
    alg: Spanned<String>,
    pem: Option<String>,
    pem_file: Option<Spanned<String>>,
}

impl AccessFile {
    /// Checks everything and builds the rules; `Ok(None)` when the file has no
    /// classes (access control off), which it may not if it has keys or tokens.
    pub fn build(self, file: &FileText) -> Result<Option<Access>, String> {
        if self.classes.is_empty() {
            return match (self.keys.first(), &self.tokens) {
                (Some(k), _) => Err(file.at(k.span(), "[[keys]] without any [classes.NAME]")),
                (None, Some(t)) => Err(file.at(t.span(), "[tokens] without any [classes.NAME]")),
                (None, None) => Ok(None),
            };
        }
        let mut classes = BTreeMap::new();
        for (name, c) in self.classes {
            let class = class(&name, c, file)?;
            classes.insert(name.into_inner(), Arc::new(class));
        }
        let keys = keys(self.keys, &classes, file)?;
        let tokens = self.tokens.map(|t| verifier(t, file)).transpose()?.unwrap_or_default();
        let source = file.path.to_path_buf();
        Ok(Some(Access { source, classes, keys, tokens }))
    }
}

fn class(name: &Spanned<String>, c: ClassFile, file: &FileText) -> Result<Class, String> {
    let (span, name) = (name.span(), name.get_ref());
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(file.at(span, format!("class name `{name}`: use letters, digits, _ and -")));
    }
    let at_least_one = |v: &Option<Spanned<usize>>, what: &str| match v {
        Some(n) if *n.get_ref() == 0 => Err(file.at(n.span(), format!("{what} must be at least 1"))),
        _ => Ok(v.as_ref().map(|n| *n.get_ref())),
    };
    let limits = Limits {
        max_connections_per_principal: at_least_one(&c.max_connections_per_principal, "max_connections_per_principal")?,
        max_connections: at_least_one(&c.max_connections, "max_connections")?,
        max_subscriptions: at_least_one(&c.max_subscriptions, "max_subscriptions")?,
        max_request_rate: c.max_request_rate,
    };
    let max_limit = at_least_one(&c.history_max_limit, "history_max_limit")?;
    if let (Some(m), false) = (&c.history_max_limit, c.history) {
        return Err(file.at(m.span(), "history_max_limit needs history = true"));
    }
    let tier = match c.throttle_ms {
        None => Tier::Full,
        Some(ms) if *ms.get_ref() == 0 => {
            return Err(file.at(ms.span(), "throttle_ms must be at least 1 (leave it out for full delivery)"));
        }
        Some(ms) => Tier::Throttle(Duration::from_millis(*ms.get_ref())),
    };
    Ok(Class {
        name: name.to_string(),
        pairs: Rules {
            allow: patterns(c.allow, PairPattern::parse, file)?,
            deny: patterns(c.deny, PairPattern::parse, file)?,
        },
        channels: Rules {
            allow: patterns(c.allow_channels, ChannelPattern::parse, file)?,
            deny: patterns(c.deny_channels, ChannelPattern::parse, file)?,
        },
        limits,
        history: History { allowed: c.history, max_limit },
        tier,
        admin: c.admin,
    })
}

fn patterns<P>(
    list: Vec<Spanned<String>>,
    parse: fn(&str) -> Result<P, String>,
    file: &FileText,
) -> Result<Vec<P>, String> {
    list.iter().map(|s| parse(s.get_ref()).map_err(|e| file.at(s.span(), e))).collect()
}

fn keys(
    list: Vec<Spanned<KeyFile>>,
    classes: &BTreeMap<String, Arc<Class>>,
    file: &FileText,
) -> Result<Vec<ApiKey>, String> {
    let mut keys: Vec<ApiKey> = Vec::new();
    for k in list {
        let k = k.into_inner();
        let hash = KeyHash::parse(k.hash.get_ref()).map_err(|e| file.at(k.hash.span(), e))?;
        if keys.iter().any(|other| other.hash == hash) {
            return Err(file.at(k.hash.span(), "this hash is given twice"));
        }
        let class = classes
            .get(k.class.get_ref())
            .ok_or_else(|| file.at(k.class.span(), format!("no class `{}`", k.class.get_ref())))?;
        if k.principal.get_ref().is_empty() {
            return Err(file.at(k.principal.span(), "principal is empty"));
        }
        keys.push(ApiKey { hash, principal: k.principal.into_inner(), class: class.clone() });
    }
    Ok(keys)
}

fn verifier(t: Spanned<TokensFile>, file: &FileText) -> Result<token::Verifier, String> {
    let t = t.into_inner();
    let mut v = token::Verifier::default();
    if let Some(secret) = t.hs256_secret {
        if secret.get_ref().len() < MIN_SECRET {
            return Err(file.at(secret.span(), format!("hs256_secret must be at least {MIN_SECRET} bytes")));
        }
        v.hs256 = Some(DecodingKey::from_secret(secret.get_ref().as_bytes()));
    }
    for (kid, k) in t.public_keys {
        let span = k.span();
        let k = k.into_inner();
        let pem = match (k.pem, &k.pem_file) {
            (Some(pem), None) => pem,
            (None, Some(path)) => {
                let full = file.path.parent().unwrap_or(Path::new(".")).join(path.get_ref());
                std::fs::read_to_string(&full).map_err(|e| file.at(path.span(), format!("{}: {e}", full.display())))?
            }
            _ => return Err(file.at(span, format!("public key `{kid}`: give either pem or pem_file"))),
        };
        let (alg, key) = match k.alg.get_ref().as_str() {
            "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem.as_bytes())),
            "EdDSA" => (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem.as_bytes())),
            other => return Err(file.at(k.alg.span(), format!("alg `{other}`: use RS256 or EdDSA"))),
        };
        let key = key.map_err(|e| {
            file.at(span, format!("public key `{kid}` is not an {} public key in PEM: {e}", k.alg.get_ref()))
        })?;
        v.public.push((kid, alg, key));
    }
    Ok(v)
}
