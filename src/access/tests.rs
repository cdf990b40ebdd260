//! Rules read from inline files, keys and tokens authenticated against them.
//! The RSA and Ed25519 keys are test-only, made with openssl, in
//! tests/fixtures/access/.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/access");
const SECRET: &str = "an HS256 secret of at least 32 bytes, for tests";

fn load(text: &str) -> Result<Option<Access>, String> {
    let path = format!("{FIXTURES}/test.toml");
    let file = FileText { path: Path::new(&path), text };
    let rules: AccessFile = toml::from_str(text).map_err(|e| file.toml_error(&e))?;
    rules.build(&file)
}

fn rules() -> Access {
    let (_, hash) = key_pair();
    let text = format!(
        r#"
[classes.anonymous]
allow = ["BTC-USD"]
allow_channels = ["ticker"]

[classes.pro]
allow = ["*"]
deny = ["*-EUR"]
allow_channels = ["*"]
history = true
throttle_ms = 250

[[keys]]
principal = "alice"
class = "pro"
hash = "{hash}"

[tokens]
hs256_secret = "{SECRET}"
[tokens.public_keys.rsa1]
alg = "RS256"
pem_file = "rsa.pub.pem"
[tokens.public_keys.ed1]
alg = "EdDSA"
pem_file = "ed25519.pub.pem"
"#
    );
    load(&text).unwrap().expect("classes make rules")
}

/// A fixed key, so that `rules` can hold its hash.
fn key_pair() -> (String, KeyHash) {
    let key = format!("{KEY_PREFIX}{}", "0123456789abcdef".repeat(4));
    let hash = KeyHash::of(&key);
    (key, hash)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

fn token(alg: Algorithm, kid: Option<&str>, claims: serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&fixture("rsa.key.pem")).unwrap(),
        _ => EncodingKey::from_ed_pem(&fixture("ed25519.key.pem")).unwrap(),
    };
    let header = Header { kid: kid.map(str::to_string), ..Header::new(alg) };
    encode(&header, &claims, &key).unwrap()
}

fn claims() -> serde_json::Value {
    json!({"sub": "bob", "class": "pro", "exp": now() + 3600})
}

fn refused(access: &Access, token: &str) -> AuthError {
    access.authenticate(Credential::Bearer(token)).unwrap_err()
}

#[test]
fn keys_anonymous_and_shapes() {
    let access = rules();
    let (key, _) = key_pair();
    let alice = access.authenticate(Credential::Bearer(&key)).unwrap();
    assert_eq!((alice.name(), alice.class().name(), alice.via(), alice.expires()), ("alice", "pro", Via::Key, None));
    assert_eq!(alice.class().tier(), Tier::Throttle(Duration::from_millis(250)));
    let anon = access.authenticate(Credential::None).unwrap();
    assert_eq!((anon.name(), anon.class().name(), anon.via()), ("anonymous", "anonymous", Via::Anonymous));
    assert_eq!(anon.may_subscribe("btc-usd", Channel::Ticker), Ok(()));
    assert!(anon.may_subscribe("BTC-USD", Channel::Matches).is_err());
    assert_eq!(refused(&access, &new_key().0), AuthError::UnknownKey);
    assert_eq!(refused(&access, "hunter2"), AuthError::Malformed);
    assert_eq!(refused(&access, "a.b.c"), AuthError::Token(TokenError::Malformed));
    let none = load("[classes.pro]\nallow = [\"*\"]\n").unwrap().unwrap();
    assert_eq!(none.authenticate(Credential::None).unwrap_err(), AuthError::Required);
}

#[test]
fn tokens_of_each_algorithm_are_taken() {
    let access = rules();
    for (alg, kid) in [(Algorithm::HS256, None), (Algorithm::RS256, Some("rsa1")), (Algorithm::EdDSA, Some("ed1"))] {
        let p = access.authenticate(Credential::Bearer(&token(alg, kid, claims()))).unwrap();
        assert_eq!((p.name(), p.class().name(), p.via()), ("bob", "pro", Via::Token), "{alg:?}");
        let left = p.expires().unwrap().duration_since(SystemTime::now()).unwrap();
        assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600), "{alg:?}: {left:?}");
    }
}

#[test]
fn bad_tokens_are_refused() {
    let access = rules();
    let t = |alg, kid, c| refused(&access, &token(alg, kid, c));
    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims();
        c[k] = v;
        c
    };
    assert_eq!(t(Algorithm::HS256, None, with("exp", json!(now() - 1))), AuthError::Token(TokenError::Expired));
    assert_eq!(t(Algorithm::HS256, None, with("nbf", json!(now() + 600))), AuthError::Token(TokenError::NotYetValid));
    assert!(access
        .authenticate(Credential::Bearer(&token(Algorithm::HS256, None, with("nbf", json!(now() + 2)))))
        .is_ok());
    let no_exp = json!({"sub": "bob", "class": "pro"});
    assert_eq!(t(Algorithm::HS256, None, no_exp), AuthError::Token(TokenError::MissingClaim("exp")));
    let no_class = json!({"sub": "bob", "exp": now() + 60});
    assert_eq!(t(Algorithm::HS256, None, no_class), AuthError::Token(TokenError::MissingClaim("class")));
    assert_eq!(t(Algorithm::HS256, None, with("class", json!("gold"))), AuthError::UnknownClass("gold".into()));
    assert_eq!(t(Algorithm::RS256, Some("nope"), claims()), AuthError::Token(TokenError::UnknownKid("nope".into())));
    assert_eq!(t(Algorithm::RS256, None, claims()), AuthError::Token(TokenError::MissingKid("RS256".into())));
    assert_eq!(
        t(Algorithm::RS256, Some("ed1"), claims()),
        AuthError::Token(TokenError::WrongKeyAlgorithm("ed1".into()))
    );
    assert_eq!(
        t(Algorithm::HS256, None, with("allow", json!(["BTC"]))),
        AuthError::Token(TokenError::BadClaim("allow"))
    );
}

#[test]
fn wrong_signatures_and_alg_none_are_refused() {
    let access = rules();
    // Signed with another RSA key, presented as rsa1's.
    let other = EncodingKey::from_rsa_pem(&fixture("other-rsa.key.pem")).unwrap();
    let header = Header { kid: Some("rsa1".into()), ..Header::new(Algorithm::RS256) };
    let forged = encode(&header, &claims(), &other).unwrap();
    assert_eq!(refused(&access, &forged), AuthError::Token(TokenError::BadSignature));
    // A good token with its claims swapped for others.
    let good = token(Algorithm::HS256, None, claims());
    let evil = token(Algorithm::HS256, None, json!({"sub": "bob", "class": "pro", "exp": now() + 99999}));
    let parts: Vec<&str> = good.split('.').collect();
    let spliced = format!("{}.{}.{}", parts[0], evil.split('.').nth(1).unwrap(), parts[2]);
    assert_eq!(refused(&access, &spliced), AuthError::Token(TokenError::BadSignature));
    // `alg: none`, unsigned ({"alg":"none","typ":"JWT"} and the same claims).
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.", parts[1]);
    assert_eq!(refused(&access, &none), AuthError::Token(TokenError::Malformed));
    // HS256 signed with the RSA public key as the secret (the classic confusion).
    let pem = fixture("rsa.pub.pem");
    let confused = encode(&Header::new(Algorithm::HS256), &claims(), &EncodingKey::from_secret(&pem)).unwrap();
    assert_eq!(refused(&access, &confused), AuthError::Token(TokenError::BadSignature));
    // No HS256 secret configured: HS256 tokens are not taken at all.
    let rsa_only =
        load("[classes.pro]\nallow=[\"*\"]\n[tokens.public_keys.rsa1]\nalg=\"RS256\"\npem_file=\"rsa.pub.pem\"\n");
    let e = refused(&rsa_only.unwrap().unwrap(), &good);
    assert_eq!(e, AuthError::Token(TokenError::Algorithm("HS256".into())));
}

#[test]
fn a_tokens_allow_claim_narrows_its_class() {
    let access = rules();
    let mut c = claims();
    c["allow"] = json!(["btc-*", "ETH-USD"]);
    let p = access.authenticate(Credential::Bearer(&token(Algorithm::HS256, None, c))).unwrap();
    assert_eq!(p.may_subscribe("BTC-USD", Channel::Matches), Ok(()));
    assert_eq!(p.may_read_history("eth-usd", Channel::Ticker, 10), Ok(()));
    let e = p.may_subscribe("SOL-USD", Channel::Ticker).unwrap_err();
    assert_eq!(e.to_string(), "the token of `bob` does not allow `SOL-USD`");
    // The class's deny list still wins over the token's allow.
    assert_eq!(p.may_subscribe("BTC-EUR", Channel::Ticker).unwrap_err().to_string(), "class `pro` denies `*-EUR`");
}

#[test]
fn mistakes_name_their_line() {
    let at = |text: &str| load(text).unwrap_err();
    let file = format!("{FIXTURES}/test.toml");
    for (text, want) in [
        ("[classes.free]\nallow = [\"BTC-*\"]\nfoo = 1\n", ":3: unknown key `foo`"),
        ("[classes.free]\nallow_channels = [\"ticker\",\n  \"full\"]\n", ":3: `full` is not a channel hedgehog relays"),
        ("[classes.free]\n\ndeny = [\"BTC\"]\n", ":3: `BTC` is not a pair pattern"),
        ("[classes.free]\nmax-connections = 3\n", ":2: unknown key `max-connections` (write `max_connections`)"),
        ("[classes.free]\nmax_connections = -3\n", ":2: invalid value: integer `-3`"),
        ("[classes.free]\nmax_connections = 0\n", ":2: max_connections must be at least 1"),
        ("[classes.free]\nthrottle_ms = 0\n", ":2: throttle_ms must be at least 1"),
        ("[classes.free]\nhistory_max_limit = 5\n", ":2: history_max_limit needs history = true"),
        ("[classes.\"a b\"]\n", ":1: class name `a b`"),
        (
            "[classes.free]\n[[keys]]\nprincipal = \"a\"\nclass = \"gold\"\nhash = \"ab\"\n",
            ":5: `ab` is not a key hash",
        ),
        ("[[keys]]\nprincipal = \"a\"\nclass = \"free\"\nhash = \"ab\"\n", ":1: [[keys]] without any [classes.NAME]"),
        ("[classes.free]\n[tokens]\nhs256_secret = \"short\"\n", ":3: hs256_secret must be at least 32 bytes"),
        (
            "[classes.free]\n[tokens.public_keys.k]\nalg = \"HS512\"\npem = \"x\"\n",
            ":3: alg `HS512`: use RS256 or EdDSA",
        ),
        ("[classes.free]\n[tokens.public_keys.k]\nalg = \"RS256\"\npem_file = \"missing.pem\"\n", ":4: "),
        ("[classes.free]\n[tokens.public_keys.k]\nalg = \"EdDSA\"\npem = \"junk\"\n", "not an EdDSA public key in PEM"),
        ("[classes.free]\n[tokens.public_keys.k]\nalg = \"RS256\"\n", "give either pem or pem_file"),
        ("[classes.free\n", ":1: "),
    ] {
        let e = at(text);
        assert!(e.starts_with(&file) && e.contains(want) && !e.contains('\n'), "{text:?}: {e}");
    }
    let (_, hash) = key_pair();
    let unknown = format!("[classes.free]\n[[keys]]\nprincipal = \"a\"\nclass = \"gold\"\nhash = \"{hash}\"\n");
    assert!(at(&unknown).ends_with(":4: no class `gold`"), "{}", at(&unknown));
    assert_eq!(load("").unwrap(), None, "no classes: access control off");
}

#[test]
fn check_config_describes_each_class() {
    let text = rules().describe();
    for want in [
        "access control: on (2 classes, 1 keys)",
        "class `anonymous`",
        "class `pro`",
        "pairs denied      *-EUR",
        "history           yes, limit the server's (--history-size)",
        "throttled: one ticker and level2_batch message per product every 250 ms",
        "key of `alice`: class `pro`",
        "tokens: HS256 (the secret), EdDSA with key `ed1`, RS256 with key `rsa1`",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    assert!(!text.contains(&key_pair().1.to_string()), "no hashes in the report");
}
