//! Records the git revision the binaries are built from (`--version`, `*_build_info`).

fn main() {
    let rev = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SD_GIT_REVISION={rev}");
    // A new commit changes HEAD's target. Watched only where they exist: a path that does not
    // (outside a checkout, or in a git worktree, where `.git` is a file) counts as changed on
    // every build, and would rebuild everything that depends on this crate each time.
    for path in ["../.git/HEAD", "../.git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
