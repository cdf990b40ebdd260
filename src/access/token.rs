//! Signed tokens (JWT): HS256 with the configured secret, RS256 and EdDSA with the
//! configured public keys, each found by the token's `kid`.
//!
//! Refused: any other algorithm (`none` above all: jsonwebtoken has no such
//! algorithm, so its header does not even parse), an RS256 or EdDSA token without
//! a `kid` or with one not configured, or whose key is of another algorithm, a bad
//! signature, no `exp` or one past, an `nbf` more than [`NBF_SKEW`] ahead, no
//! `sub` or `class`, a class not configured, a malformed `allow`. `aud` and `iss`
//! are not looked at.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::pattern::PairPattern;

/// How far ahead of this host's clock a token's `nbf` may be: a token made "now"
/// by an issuer whose clock runs a little fast is still taken. `exp` has no such
/// grace: the token is refused at its `exp`, the moment a session would be closed.
pub const NBF_SKEW: Duration = Duration::from_secs(5);

/// What verifies tokens: the HS256 secret and the public keys by `kid`.
#[derive(Default)]
pub struct Verifier {
    pub(super) hs256: Option<DecodingKey>,
    pub(super) public: Vec<(String, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.public.iter().map(|(kid, ..)| kid.as_str()).collect();
        write!(f, "Verifier {{ hs256: {}, kids: {kids:?} }}", self.hs256.is_some())
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub sub: String,
    pub class: String,
    pub expires: SystemTime,
    /// The `allow` claim: pair patterns narrowing the class, if any.
    pub allow: Option<Vec<PairPattern>>,
}

/// Why a token was refused: the client should get a new one (401). The text
/// never quotes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a JWT hedgehog accepts (alg must be HS256, RS256 or EdDSA)")]
    Malformed,
    #[error("tokens signed with {0} are not accepted here")]
    Algorithm(String),
    #[error("token has no `kid`; {0} tokens need one")]
    MissingKid(String),
    #[error("unknown key id `{0}`")]
    UnknownKid(String),
    #[error("key `{0}` is not a key for this token's algorithm")]
    WrongKeyAlgorithm(String),
    #[error("bad signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token has no `{0}` claim")]
    MissingClaim(&'static str),
    #[error("token's `{0}` claim is malformed")]
    BadClaim(&'static str),
}

/// The claims hedgehog reads; all optional here so that a missing one is named.
#[derive(serde::Deserialize)]
struct Claims {
    sub: Option<String>,
    class: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    allow: Option<Vec<String>>,
}

impl Verifier {
    /// Checks `token`'s header, signature and times, and reads its claims.
    /// (Whether its class exists is the caller's question.)
    pub fn verify(&self, token: &str) -> Result<Grant, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.validate_nbf = false; // below, with NBF_SKEW
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(refusal)?.claims;
        grant(claims, SystemTime::now())
    }

    /// What it accepts, for `hedgehog check-config`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.hs256.iter().map(|_| "HS256 (the secret)".to_string()).collect();
        parts.extend(self.public.iter().map(|(kid, alg, _)| format!("{alg:?} with key `{kid}`")));
        match parts.is_empty() {
            true => "not accepted".into(),
            false => parts.join(", "),
        }
    }

    fn key_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, TokenError> {
        match alg {
            Algorithm::HS256 => self.hs256.as_ref().ok_or_else(|| TokenError::Algorithm("HS256".into())),
            Algorithm::RS256 | Algorithm::EdDSA => {
                let kid = kid.ok_or_else(|| TokenError::MissingKid(format!("{alg:?}")))?;
                let (_, key_alg, key) = self
                    .public
                    .iter()
                    .find(|(k, ..)| k == kid)
                    .ok_or_else(|| TokenError::UnknownKid(kid.to_string()))?;
                match *key_alg == alg {
                    true => Ok(key),
                    false => Err(TokenError::WrongKeyAlgorithm(kid.to_string())),
                }
            }
            other => Err(TokenError::Algorithm(format!("{other:?}"))),
        }
    }
}

fn refusal(e: jsonwebtoken::errors::Error) -> TokenError {
    match e.kind() {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::MissingRequiredClaim(_) => TokenError::MissingClaim("exp"),
        ErrorKind::InvalidClaimFormat(_) => TokenError::BadClaim("exp"),
        ErrorKind::InvalidAlgorithm => TokenError::Algorithm("this algorithm with this key".into()),
        _ => TokenError::Malformed,
    }
}

fn grant(c: Claims, now: SystemTime) -> Result<Grant, TokenError> {
    let now_secs = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let exp = c.exp.ok_or(TokenError::MissingClaim("exp"))?;
    if exp <= now_secs {
        return Err(TokenError::Expired);
    }
    if c.nbf.is_some_and(|nbf| nbf > now_secs + NBF_SKEW.as_secs()) {
        return Err(TokenError::NotYetValid);
    }
    let allow = c
        .allow
        .map(|list| list.iter().map(|p| PairPattern::parse(p)).collect::<Result<Vec<_>, _>>())
        .transpose()
        .map_err(|_| TokenError::BadClaim("allow"))?;
    Ok(Grant {
        sub: c.sub.filter(|s| !s.is_empty()).ok_or(TokenError::MissingClaim("sub"))?,
        class: c.class.filter(|s| !s.is_empty()).ok_or(TokenError::MissingClaim("class"))?,
        // A time the clock cannot hold is a bad claim, not a panic.
        expires: UNIX_EPOCH.checked_add(Duration::from_secs(exp)).ok_or(TokenError::BadClaim("exp"))?,
        allow,
    })
}
