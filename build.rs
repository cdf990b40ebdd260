//! Two things the code needs from outside Rust:
//! - the commit this binary was built from, for `hedgehog_build_info`:
//!   `HEDGEHOG_COMMIT` from the environment (an image build passes it), else
//!   `git rev-parse` when building in a work tree, else "unknown";
//! - the web page's files (`ui/`), as a table of `include_bytes!` with each
//!   file's content hash (the ETag), for `src/server/ui.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HEDGEHOG_COMMIT");
    // Where git keeps HEAD and the branches (in a worktree, `.git` is a file
    // and they are elsewhere). Only paths that exist are watched: cargo runs
    // this script again at every build while a watched path is missing.
    for what in ["HEAD", "refs/heads"] {
        if let Some(path) = git(&["rev-parse", "--git-path", what]).filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("HEDGEHOG_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    println!("cargo:rustc-env=HEDGEHOG_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
    ui_assets();
}

/// What `git ARGS` prints, when git is there and answers.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Writes `$OUT_DIR/ui_assets.rs`: `UI_ASSETS`, one `Asset` per file under
/// `ui/` of a served type (sorted; dot-files and other types, such as a README,
/// left out), rebuilt whenever a file there changes.
fn ui_assets() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    // A directory: cargo looks at every file under it.
    println!("cargo:rerun-if-changed=ui");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    let mut out = String::from("pub static UI_ASSETS: &[Asset] = &[\n");
    for file in files {
        let rel = file.strip_prefix(&root).expect("under ui/").to_string_lossy().replace('\\', "/");
        let Some(content_type) = content_type(&rel) else { continue };
        let bytes = std::fs::read(&file).expect("a readable file under ui/");
        out.push_str(&format!(
            "    Asset {{ path: {rel:?}, content_type: {content_type:?}, etag: \"\\\"{:016x}\\\"\", body: include_bytes!({:?}) }},\n",
            fnv1a(&bytes),
            file.display().to_string(),
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("ui_assets.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The served types; other files (README, LICENSE, scripts) are not served.
fn content_type(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "json" => "application/json",
        _ => return None,
    })
}

/// FNV-1a, 64 bits: a content hash for the ETag (not a security boundary).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
