//! The Debian packages (`scripts/package`, cargo-deb): each unit passes `systemd-analyze
//! verify`, and the three packages install with `dpkg -i` into a container of the Debian base
//! image: a user per service, configs readable by it alone, the binaries run, and the commented
//! default configs hold only keys the binaries know.
//!
//! Runs only with `E2E_PACKAGES=1`, which `scripts/test` sets after building the packages and
//! the base image (it needs a Docker engine); otherwise it says it was skipped and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

const NAMES: [&str; 3] = ["registry", "announcer", "syncer"];

fn debs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    NAMES
        .iter()
        .map(|n| {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}; run scripts/package first", dir.display()))
                .map(|e| e.unwrap().path())
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{n}_")) && p.extension().is_some_and(|x| x == "deb"))
                .collect();
            found.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
            found.pop().unwrap_or_else(|| panic!("no {n}_*.deb in {}; run scripts/package first", dir.display()))
        })
        .collect()
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn the_packages_install_and_their_units_verify() {
    if std::env::var("E2E_PACKAGES").as_deref() != Ok("1") {
        println!("packages skipped: set E2E_PACKAGES=1 to run it (scripts/test does, after scripts/package, when Docker works)");
        return;
    }
    let debs = debs();

    // The unit files, in a root holding the package's files and this host's systemd units:
    // verify checks the unit's syntax, the units it names and that its commands exist. It
    // reports a bad value as a warning and still exits 0, so any output is a failure.
    for (name, deb) in NAMES.iter().zip(&debs) {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert!(run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(r)).0, "unpacking {}", deb.display());
        std::fs::create_dir_all(r.join("bin")).unwrap();
        std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
        assert!(run(Command::new("cp").arg("-a").arg("/usr/lib/systemd/system/.").arg(r.join("usr/lib/systemd/system"))).0);
        let (ok, out) = run(Command::new("systemd-analyze").arg("verify").arg(format!("--root={}", r.display())).arg(format!("{name}.service")));
        assert!(ok && out.trim().is_empty(), "systemd-analyze verify {name}.service:\n{out}");
    }

    // Installed into a fresh container of the base image.
    let dir = tempfile::tempdir().unwrap();
    for deb in &debs {
        std::fs::copy(deb, dir.path().join(deb.file_name().unwrap())).unwrap();
    }
    let script = r#"
        set -e
        dpkg -i /debs/*.deb
        for n in registry announcer syncer; do
            echo "user $n: $(id -u $n) $(id -gn $n)"
            echo "version $n: $($n --version)"
            echo "etc $n: $(stat -c '%U:%G %a' /etc/$n) $(stat -c '%U:%G %a' /etc/$n/$n.toml)"
            test -f /usr/lib/systemd/system/$n.service && echo "unit $n"
            echo "man $n: $(cd /usr/share/man/man1 && ls $n.1.gz $n-*.1.gz 2>/dev/null | tr '\n' ' ')"
            test -s /usr/share/bash-completion/completions/$n && test -s /usr/share/zsh/vendor-completions/_$n \
                && test -s /usr/share/fish/vendor_completions.d/$n.fish && echo "completions $n"
        done
        # The default configs parse: what is left to fill in is reported, no unknown key.
        registry serve --config /etc/registry/registry.toml 2>&1 || true
        syncer --config /etc/syncer/syncer.toml 2>&1 || true
        announcer --config /etc/announcer/announcer.toml 2>&1 || true
    "#;
    let (ok, out) = run(Command::new("docker").args(["run", "--rm", "--network", "none", "-v"]).arg(format!("{}:/debs:ro", dir.path().display())).args([
        "debian:bookworm-slim",
        "sh",
        "-c",
        script,
    ]));
    assert!(ok, "installing the packages:\n{out}");
    for n in NAMES {
        assert!(out.contains(&format!("unit {n}")), "{out}");
        assert!(out.contains(&format!("completions {n}")), "no completions for {n}:\n{out}");
        // A page for the binary and one per subcommand, its own ones included.
        let pages: Vec<&str> = out.lines().find_map(|l| l.strip_prefix(&format!("man {n}: "))).unwrap_or("").split_whitespace().collect();
        let own = match n {
            "registry" => ["registry-ls.1.gz", "registry-deregister.1.gz", "registry-snapshot-save.1.gz"],
            "announcer" => ["announcer-maint.1.gz", "announcer-config-check.1.gz", "announcer-completions.1.gz"],
            _ => ["syncer-plan.1.gz", "syncer-config-check.1.gz", "syncer-completions.1.gz"],
        };
        for page in [format!("{n}.1.gz").as_str()].into_iter().chain(own) {
            assert!(pages.contains(&page), "{n}: no {page} among {pages:?}\n{out}");
        }
        assert!(out.lines().any(|l| l.starts_with(&format!("user {n}: ")) && l.ends_with(&format!(" {n}"))), "no {n} user:\n{out}");
        assert!(out.contains(&format!("version {n}: {n} 0.")), "{out}");
        assert!(out.contains(&format!("etc {n}: root:{n} 750 root:{n} 640")), "{out}");
    }
    assert!(!out.contains("unknown field") && !out.contains("config file /etc/"), "a default config does not parse:\n{out}");
    assert!(out.contains("id: missing"), "the registry's default config should ask for an id:\n{out}");
}
