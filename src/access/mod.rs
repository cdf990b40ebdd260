//! Access control: who a connection is (a [`Principal`]) and what its [`Class`]
//! lets it do.
//!
//! The rules come from the `--config` file (`[classes.NAME]`, `[[keys]]`,
//! `[tokens]`; loaded by [`AccessFile::build`]) and are immutable once loaded:
//! one [`Access`] behind an `Arc`, shared by every shard; a reload makes a new
//! one and swaps the `Arc`. Without classes in the file there is no `Access` and
//! everything is open, as before access control existed.
//!
//! What the entry points call:
//! 1. [`Access::authenticate`] with the connection's [`Credential`] (the bearer
//!    string from `Authorization: Bearer`, `?token=` or a Coinbase `subscribe`'s
//!    own fields; [`Credential::None`] without one) -> a [`Principal`], or an
//!    [`AuthError`] for a 401.
//! 2. [`Principal::may_subscribe`] for every (pair, channel) named, and
//!    [`Principal::may_read_history`] -> a [`Refusal`] for a 403 naming the rule.
//! 3. [`Principal::class`]'s [`Class::limits`], [`Class::tier`], [`Class::is_admin`],
//!    and [`Principal::expires`] for a token's session.
//!
//! # Layout
//! - `pattern.rs`: pair and channel patterns, allow and deny lists (deny wins).
//! - `class.rs`: `Class`, its limits, history rights and delivery tier; `Refusal`.
//! - `key.rs`: API keys: making them, their SHA-256 hashes, constant-time compare.
//! - `token.rs`: JWT verification (HS256, RS256, EdDSA by `kid`).
//! - `file.rs`: the file's tables, checked and built into an `Access`; lines named.

mod class;
mod file;
mod key;
mod pattern;
#[cfg(test)]
mod tests;
mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use class::{Class, History, Limits, Refusal, Tier, ANONYMOUS};
pub use file::{AccessFile, ClassFile, FileText, KeyFile, TokensFile};
pub use key::{hash_key_text, new_key, KeyHash, KEY_PREFIX};
pub use pattern::{ChannelPattern, PairPattern};
pub use token::{TokenError, NBF_SKEW};

use crate::protocol::Channel;

/// The loaded rules. Immutable; compare two by identity (a reload is a new one,
/// and [`Access::reauthenticate`] carries each open session over to it).
#[derive(Debug)]
pub struct Access {
    source: PathBuf,
    classes: BTreeMap<String, Arc<Class>>,
    keys: Vec<ApiKey>,
    tokens: token::Verifier,
}

impl PartialEq for Access {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// One `[[keys]]` entry.
#[derive(Debug)]
struct ApiKey {
    hash: KeyHash,
    principal: String,
    class: Arc<Class>,
}

/// What a connection presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    /// Nothing: the `anonymous` class, if there is one.
    None,
    /// An API key (it starts with [`KEY_PREFIX`]) or a JWT (three dot-separated
    /// parts), told apart by shape.
    Bearer(&'a str),
}

/// Why a credential was not taken: answer 401 (never quoting the credential).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential, and no `anonymous` class: the client must present one.
    #[error("credentials required")]
    Required,
    /// Neither an API key nor a JWT by its shape.
    #[error("not an API key or a token")]
    Malformed,
    /// An API key whose hash is not configured (revoked, or mistyped).
    #[error("unknown API key")]
    UnknownKey,
    /// A token refused: the client should get a fresh one.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// A valid token naming a class that the configuration does not have.
    #[error("token names class `{0}`, which is not configured")]
    UnknownClass(String),
}

/// A [`Refusal`] with who was refused and what they asked for: a 403's message
/// (`what` and the rule; never a credential) and a log line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {refusal}")]
pub struct Denied {
    pub principal: String,
    pub class: String,
    /// The pair and channel (`BTC-USD ticker`), or what else was asked for.
    pub what: String,
    pub refusal: Refusal,
}

/// A credential kept in memory for a later check; never printed.
#[derive(Clone, PartialEq)]
struct Held(String);

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held(..)")
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Anonymous,
    Key,
    Token,
}

/// Who a connection is: a name (a key's `principal`, a token's `sub`, or
/// `anonymous`), its class, and for a token when it expires and the pairs it
/// narrows the class to. Cheap to clone (the class is shared).
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    name: String,
    class: Arc<Class>,
    via: Via,
    /// The hash of the key it came with ([`Via::Key`]): a reload finds the key
    /// again by it, or knows it was revoked.
    key: Option<KeyHash>,
    /// The token it came with ([`Via::Token`]): a reload verifies it again
    /// (a rotated secret or a removed `kid` ends its sessions).
    token: Option<Held>,
    expires: Option<SystemTime>,
    narrowed: Option<Vec<PairPattern>>,
}

impl Access {
    /// The file the rules came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn class(&self, name: &str) -> Option<&Arc<Class>> {
        self.classes.get(name)
    }

    /// Every class, by name.
    pub fn classes(&self) -> impl Iterator<Item = &Class> {
        self.classes.values().map(Arc::as_ref)
    }

    /// The configured keys' principals and classes (never their hashes).
    pub fn key_principals(&self) -> impl Iterator<Item = (&str, &str)> {
        self.keys.iter().map(|k| (k.principal.as_str(), k.class.name()))
    }

    /// Who presents `credential`. Every configured key hash is compared, in
    /// constant time each, whichever matches.
    pub fn authenticate(&self, credential: Credential<'_>) -> Result<Principal, AuthError> {
        match credential {
            Credential::None => {
                let class = self.classes.get(ANONYMOUS).ok_or(AuthError::Required)?;
                Ok(Principal::new(ANONYMOUS.into(), class.clone(), Via::Anonymous))
            }
            Credential::Bearer(key) if key.starts_with(KEY_PREFIX) => self.by_key(key),
            Credential::Bearer(token) if token.split('.').count() == 3 => self.by_token(token),
            Credential::Bearer(_) => Err(AuthError::Malformed),
        }
    }

    fn by_key(&self, key: &str) -> Result<Principal, AuthError> {
        let hash = KeyHash::of(key);
        let found = self.keys.iter().fold(None, |found, k| if k.hash.ct_eq(&hash) { Some(k) } else { found });
        let k = found.ok_or(AuthError::UnknownKey)?;
        let mut p = Principal::new(k.principal.clone(), k.class.clone(), Via::Key);
        p.key = Some(hash);
        Ok(p)
    }

    /// `p`, authenticated by other rules, under these ones: a key's principal
    /// and class as this file has them, a token verified again. `Err`: why `p`
    /// no longer has a place here (its key was removed, its token is refused,
    /// anonymous connections are no longer allowed); the session should end.
    pub fn reauthenticate(&self, p: &Principal) -> Result<Principal, String> {
        let class = |name: &str| self.classes.get(name).cloned();
        let mut again = match (p.via, &p.key, &p.token) {
            (Via::Key, Some(hash), _) => {
                let k = self.keys.iter().find(|k| k.hash.ct_eq(hash)).ok_or("its API key was removed")?;
                let mut again = Principal::new(k.principal.clone(), k.class.clone(), Via::Key);
                again.key = Some(*hash);
                again
            }
            (Via::Key, None, _) => return Err("its API key was removed".into()),
            (Via::Anonymous, _, _) => {
                let anonymous = class(ANONYMOUS).ok_or("connections without credentials are no longer allowed")?;
                Principal::new(p.name.clone(), anonymous, Via::Anonymous)
            }
            // Verified again: a rotated secret or a removed `kid` ends it.
            (Via::Token, _, Some(Held(token))) => {
                return self.by_token(token).map_err(|e| format!("its token is refused by the new rules: {e}"));
            }
            (Via::Token, _, None) => return Err("its token is no longer known".into()),
        };
        again.expires = p.expires;
        again.narrowed = p.narrowed.clone();
        Ok(again)
    }

    fn by_token(&self, token: &str) -> Result<Principal, AuthError> {
        let grant = self.tokens.verify(token)?;
        let class = self.classes.get(&grant.class).ok_or_else(|| AuthError::UnknownClass(grant.class.clone()))?;
        let mut p = Principal::new(grant.sub, class.clone(), Via::Token);
        p.expires = Some(grant.expires);
        p.narrowed = grant.allow;
        p.token = Some(Held(token.to_string()));
        Ok(p)
    }

    /// What `hedgehog check-config` prints: each class, then the keys.
    pub fn describe(&self) -> String {
        let mut out = format!("access control: on ({} classes, {} keys)\n", self.classes.len(), self.keys.len());
        if !self.classes.contains_key(ANONYMOUS) {
            out.push_str("connections without credentials: refused (401; no `anonymous` class)\n");
        }
        self.classes().for_each(|c| out.push_str(&c.describe()));
        self.key_principals().for_each(|(p, c)| out.push_str(&format!("key of `{p}`: class `{c}`\n")));
        out.push_str(&format!("tokens: {}\n", self.tokens.describe()));
        out
    }
}

impl Principal {
    fn new(name: String, class: Arc<Class>, via: Via) -> Principal {
        Principal { name, class, via, key: None, token: None, expires: None, narrowed: None }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn class(&self) -> &Class {
        &self.class
    }

    pub fn via(&self) -> Via {
        self.via
    }

    /// When its token expires (`None`: a key, or anonymous, never does).
    pub fn expires(&self) -> Option<SystemTime> {
        self.expires
    }

    /// The token's `allow` claim, if it narrows the class.
    pub fn narrowed_to(&self) -> Option<&[PairPattern]> {
        self.narrowed.as_deref()
    }

    /// The class's rules, then the token's narrowing.
    pub fn may_subscribe(&self, pair: &str, channel: Channel) -> Result<(), Refusal> {
        self.class.may_subscribe(pair, channel)?;
        self.narrowing(pair)
    }

    /// The class's history rules, then the token's narrowing.
    pub fn may_read_history(&self, pair: &str, channel: Channel, limit: usize) -> Result<(), Refusal> {
        self.class.may_read_history(pair, channel, limit)?;
        self.narrowing(pair)
    }

    /// Whether this principal may subscribe to `pair` on every one of `channels`
    /// and, with `replay`, read that much history of each: the first refusal, as
    /// a [`Denied`] naming the pair and channel.
    pub fn may_join(&self, pair: &str, channels: &[Channel], replay: Option<usize>) -> Result<(), Box<Denied>> {
        for &channel in channels {
            let checked = match replay {
                Some(n) if n > 0 => self.may_read_history(pair, channel, n),
                _ => self.may_subscribe(pair, channel),
            };
            checked.map_err(|refusal| self.denied(format!("{pair} {channel}"), refusal))?;
        }
        Ok(())
    }

    /// Keeps, of an in-band subscribe's channels and products, what this
    /// principal may have; returns the refusals, one per product and channel.
    /// A channel left with no product is dropped (its products were all refused).
    pub fn allowed_only(&self, channels: &mut BTreeMap<Channel, BTreeSet<String>>) -> Vec<Denied> {
        let (mut refused, mut emptied) = (Vec::new(), Vec::new());
        for (channel, products) in channels.iter_mut() {
            let named = !products.is_empty();
            products.retain(|p| match self.may_subscribe(p, *channel) {
                Ok(()) => true,
                Err(refusal) => {
                    refused.push(*self.denied(format!("{p} {channel}"), refusal));
                    false
                }
            });
            if named && products.is_empty() {
                emptied.push(*channel);
            }
        }
        emptied.iter().for_each(|c| drop(channels.remove(c)));
        refused
    }

    /// `refusal` of `what`, with who was refused.
    pub fn denied(&self, what: String, refusal: Refusal) -> Box<Denied> {
        Box::new(Denied { principal: self.name.clone(), class: self.class.name().to_string(), what, refusal })
    }

    fn narrowing(&self, pair: &str) -> Result<(), Refusal> {
        let pair = pair.to_ascii_uppercase();
        match &self.narrowed {
            Some(list) if !list.iter().any(|p| p.matches(&pair)) => {
                Err(Refusal::TokenNarrows { principal: self.name.clone(), pair })
            }
            _ => Ok(()),
        }
    }
}
