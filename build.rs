//! Records the git commit of the build for `totes_cdc_build_info{git_sha}`: taken from
//! TOTES_CDC_GIT_SHA when the builder sets it (container builds without .git), else from git.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=TOTES_CDC_GIT_SHA");
    // A new commit changes the branch's ref file (HEAD names it).
    if let Ok(head) = std::fs::read_to_string(".git/HEAD") {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{r}");
        }
    }
    let sha = std::env::var("TOTES_CDC_GIT_SHA").ok().or_else(|| {
        Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    });
    println!(
        "cargo:rustc-env=TOTES_CDC_GIT_SHA={}",
        sha.unwrap_or_else(|| "unknown".into())
    );
}
