//! The access-control commands of the real binary: `hedgehog check-config FILE`
//! (exit 0 and a report per class; a bad file is one line naming its line, exit 2),
//! `hedgehog hash-key`, and what `serve` says at start about access control.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/access");

fn hedgehog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hedgehog")).args(args).env_remove("HEDGEHOG_CONFIG").output().unwrap()
}

/// Writes a config file into a folder of its own (with the fixtures' public keys
/// beside it, for `pem_file`) and returns its path.
fn config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hedgehog-access-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for key in ["rsa.pub.pem", "ed25519.pub.pem"] {
        std::fs::copy(format!("{FIXTURES}/{key}"), dir.join(key)).unwrap();
    }
    let path = dir.join("hedgehog.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const GOOD: &str = r#"
[server]
port = 0
max_subscriptions = 50

[classes.anonymous]
allow = ["BTC-USD"]
allow_channels = ["ticker"]
max_connections_per_principal = 1

[classes.pro]
allow = ["*"]
deny = ["*-EUR"]
allow_channels = ["*"]
deny_channels = ["level2_batch"]
max_request_rate = 100
history = true
history_max_limit = 500
throttle_ms = 250
admin = true

[[keys]]
principal = "alice"
class = "pro"
hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

[tokens]
hs256_secret = "a test secret that is at least 32 bytes long"
[tokens.public_keys.rsa1]
alg = "RS256"
pem_file = "rsa.pub.pem"
[tokens.public_keys.ed1]
alg = "EdDSA"
pem_file = "ed25519.pub.pem"
"#;

#[test]
fn check_config_reports_each_class() {
    let path = config("good", GOOD);
    let out = hedgehog(&["check-config", path.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap());
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    for want in [
        "ok",
        "class `anonymous`",
        "class `pro` (admin)",
        "pairs allowed     BTC-USD",
        "channels denied   level2_batch",
        "connections       1 per principal",
        "request rate      100 a second per connection",
        "history           yes, limit at most 500",
        "every 250 ms",
        "key of `alice`: class `pro`",
        "RS256 with key `rsa1`",
    ] {
        assert!(stdout.contains(want), "{want:?} not in:\n{stdout}");
    }
    assert!(!stdout.contains("ba7816bf"), "the report shows no hash");
}

#[test]
fn a_bad_file_is_one_line_naming_the_line_and_exit_2() {
    for (name, text, want) in [
        (
            "typo",
            "[classes.free]\nallow = [\"BTC-*\"]\nalow_channels = [\"ticker\"]\n",
            ":3: unknown key `alow_channels`",
        ),
        ("class", &GOOD.replace("class = \"pro\"", "class = \"gold\""), ":24: no class `gold`"),
        ("toml", "[server\nport = 1\n", ":1: "),
    ] {
        let path = config(name, text);
        for args in [vec!["check-config", path.to_str().unwrap()], vec!["--config", path.to_str().unwrap()]] {
            let out = hedgehog(&args);
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            let prefix = format!("hedgehog: {}", path.display());
            assert!(stderr.starts_with(&prefix) && stderr.contains(want), "{args:?}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        }
    }
}

#[test]
fn hash_key_prints_a_key_and_its_hash() {
    let out = hedgehog(&["hash-key"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {stdout}"));
        line[name.len()..].trim().trim_matches('"').to_string()
    };
    let (key, hash) = (field("key:"), field("hash:"));
    assert!(key.starts_with(hedgehog::access::KEY_PREFIX) && key.len() == 67, "{key}");
    assert_eq!(hedgehog::access::KeyHash::of(&key).to_string(), hash);
    assert_eq!(field("hash = "), hash, "the [[keys]] entry holds the same hash");
    let again = String::from_utf8(hedgehog(&["hash-key"]).stdout).unwrap();
    assert!(!again.contains(&key), "a new key each time");
}

/// `serve` says at start, at warn level, whether access control is off or its
/// rules are enforced (and that SIGHUP reloads them).
#[test]
fn serve_says_whether_access_control_is_on() {
    let path = config("serve", GOOD);
    for (args, want) in [
        (vec!["--simulate", "--port", "0"], "access control is OFF (no --config file)"),
        (vec!["--simulate", "--config", path.to_str().unwrap()], "access control is ON"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hedgehog"))
            .args(&args)
            .env_remove("HEDGEHOG_CONFIG")
            .env("RUST_LOG", "warn")
            .env("WEB_CONCURRENCY", "1")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let end = Instant::now() + Duration::from_secs(20);
        let found = loop {
            match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains(want) => break Some(line),
                Ok(_) => continue,
                Err(_) => break None,
            }
        };
        child.kill().unwrap();
        child.wait().unwrap();
        let line = found.unwrap_or_else(|| panic!("{args:?}: no {want:?} within 20 s"));
        assert!(line.contains("WARN"), "{line}");
    }
}

/// The README's complete example file is one `check-config` takes (with its
/// placeholder hash made a real one and its issuer's public key in place).
#[test]
fn the_readme_example_file_checks() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("### The config file").nth(1).expect("the section");
    let example = section.split("```toml\n").nth(1).and_then(|s| s.split("```").next()).expect("a toml block");
    let hash = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert!(example.contains("\"9f2c...64 hex digits...\""), "the placeholder this test replaces");
    let path = config("readme", &example.replace("9f2c...64 hex digits...", hash));
    let keys = path.parent().unwrap().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::copy(format!("{FIXTURES}/rsa.pub.pem"), keys.join("issuer-2026.pem")).unwrap();
    let out = hedgehog(&["check-config", path.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    for want in ["class `anonymous`", "class `pro`", "key of `alice`: class `pro`"] {
        assert!(stdout.contains(want), "{want:?} in {stdout}");
    }
}
