//! Names the commit this binary was built from, for `hedgehog_build_info`:
//! `HEDGEHOG_COMMIT` from the environment (an image build passes it), else
//! `git rev-parse` when building in a work tree, else "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=HEDGEHOG_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let commit = std::env::var("HEDGEHOG_COMMIT").ok().filter(|c| !c.is_empty()).or_else(|| {
        let out = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!("cargo:rustc-env=HEDGEHOG_COMMIT={}", commit.unwrap_or_else(|| "unknown".into()));
}
