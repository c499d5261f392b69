//! `<binary> config check FILE` on the real binaries: a bad file is refused with every problem
//! named (exit 2); a good one prints the effective settings (exit 0), with the binary's own
//! environment variables applied as the daemon would, lists in either form, and secrets only as
//! paths.

use std::path::Path;
use std::process::Command;

use e2e::binary;

fn check(bin: &str, pre: &[&str], file: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(binary(bin));
    cmd.args(pre).arg("check").arg(file);
    // Only what the test sets: none of the caller's REGISTRY_*/ANNOUNCER_*/SYNCER_* variables.
    for (k, _) in std::env::vars() {
        if k.starts_with("REGISTRY_") || k.starts_with("ANNOUNCER_") || k.starts_with("SYNCER_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn registry_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "id = 0\nlisten = \"nowhere\"\nheartbeat = \"5s\"\npeers = [\"1=127.0.0.1:7401\", \"x=oops\"]\n");
    let (code, out, err) = check("registry", &["config"], &bad, &[]);
    assert_eq!(code, 2, "{out}{err}");
    for needle in ["id:", "listen:", "data-dir:", "heartbeat:", "peer authentication"] {
        assert!(err.contains(needle), "{needle} not named:\n{err}");
    }
    assert!(err.contains("oops") || err.contains("\"x\""), "the bad peer is not named:\n{err}");

    let secret = write(dir.path(), "secret", "c2VjcmV0LXRoYXQtbXVzdC1uZXZlci1iZS1wcmludGVk\n");
    let good = write(
        dir.path(),
        "good.toml",
        &format!(
            "id = 1\nlisten = \"127.0.0.1:7401\"\ndata_dir = \"/var/lib/registry\"\npeers = \"1=127.0.0.1:7401, 2=127.0.0.1:7402, 3=127.0.0.1:7403\"\ncluster_secret_file = \"{}\"\n",
            secret.display()
        ),
    );
    let (code, out, err) = check("registry", &["config"], &good, &[("REGISTRY_HEARTBEAT", "40ms")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("peers                    = 1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403"), "{out}");
    assert!(out.contains(&format!("cluster secret from {}", secret.display())), "{out}");
    assert!(out.contains("heartbeat                = 40ms"), "REGISTRY_HEARTBEAT was not applied:\n{out}");
    assert!(out.contains("election_timeout_max     = 300ms") && out.contains("audit_log                = (none)"), "{out}");
    assert!(!out.contains("c2VjcmV0"), "the secret itself was printed:\n{out}");
}

#[test]
fn announcer_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        "ttl = \"0s\"\n[[services]]\nname = \"web servers\"\naddress = \"10.0.0.5\"\ncheck = { tcp = \"127.0.0.1:80\", rise = 0 }\n",
    );
    let (code, out, err) = check("announcer", &["config"], &bad, &[]);
    assert_eq!(code, 2, "{out}{err}");
    for needle in ["registry:", "ttl:", "services[0].name", "services[0].address", "services[0].check.rise"] {
        assert!(err.contains(needle), "{needle} not named:\n{err}");
    }

    let token = write(dir.path(), "token", "dG9rZW4tdGhhdC1tdXN0LW5ldmVyLWJlLXByaW50ZWQtYXQtYWxs\n");
    let good = write(
        dir.path(),
        "good.toml",
        &format!(
            "registry = \"http://10.0.0.1:7401, http://10.0.0.2:7401\"\ntoken_file = \"{}\"\n[[services]]\nname = \"web-servers\"\naddress = \"10.0.0.5:8080\"\ncheck = {{ http = \"http://127.0.0.1:8080/health\" }}\n",
            token.display()
        ),
    );
    let (code, out, err) = check("announcer", &["config"], &good, &[("ANNOUNCER_DRAIN", "7s")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("registry") && out.contains("http://10.0.0.1:7401,http://10.0.0.2:7401"), "{out}");
    assert!(out.contains("services[0].address") && out.contains("10.0.0.5:8080"), "{out}");
    assert!(out.contains("http http://127.0.0.1:8080/health, every 1s, timeout 1s, rise 2, fall 2"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("drain ") && l.ends_with("= 7s")), "ANNOUNCER_DRAIN was not applied:\n{out}");
    assert!(out.contains(&token.display().to_string()) && !out.contains("dG9rZW4"), "{out}");

    // A conf.d directory (ANNOUNCER_CONFIG_DIR): its services follow the file's, each shown
    // with where it came from; an instance in two files is refused naming both.
    let confd = dir.path().join("announcer.d");
    std::fs::create_dir(&confd).unwrap();
    write(&confd, "10-api.toml", "[[services]]\nname = \"api-servers\"\naddress = \"10.0.0.5:9090\"\n");
    let confd_env = confd.display().to_string();
    let (code, out, err) = check("announcer", &["config"], &good, &[("ANNOUNCER_CONFIG_DIR", &confd_env)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("config_dir ") && l.ends_with(&confd_env)), "{out}");
    assert!(out.lines().any(|l| l.starts_with("services[1].from ") && l.contains("10-api.toml: services[0]")), "{out}");
    write(&confd, "20-web.toml", "[[services]]\nname = \"web-servers\"\naddress = \"10.0.0.5:8080\"\n");
    let (code, out, err) = check("announcer", &["config"], &good, &[("ANNOUNCER_CONFIG_DIR", &confd_env)]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("web-servers/10.0.0.5:8080 is listed twice: services[0] and") && err.contains("20-web.toml: services[0]"), "{err}");
}

#[test]
fn syncer_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "bad.toml", "haproxy_socket = \"/run/haproxy/admin.sock\"\nbackend = [\"bad name!\"]\nmax_remove_fraction = 2.0\nbogus = 1\n");
    let (code, out, err) = check("syncer", &["config"], &bad, &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("bogus"), "an unknown key is not named:\n{err}");
    let bad = write(dir.path(), "bad2.toml", "haproxy_socket = \"/run/haproxy/admin.sock\"\nbackend = [\"bad name!\"]\nmax_remove_fraction = 2.0\n");
    let (code, _, err) = check("syncer", &["config"], &bad, &[]);
    assert_eq!(code, 2, "{err}");
    for needle in ["registry:", "bad name!", "max-remove-fraction"] {
        assert!(err.contains(needle), "{needle} not named:\n{err}");
    }

    // `backends`, the key earlier versions read, still works; a list as one string too.
    let good = write(
        dir.path(),
        "good.toml",
        "registry = [\"http://10.0.0.1:7401\"]\nhaproxy_socket = \"/run/haproxy/admin.sock\"\nbackends = \"web-servers, api-servers=api\"\nid = \"lb-1\"\n",
    );
    let (code, out, err) = check("syncer", &["config"], &good, &[("SYNCER_BATCH", "70ms")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("backend ") && l.ends_with("= web-servers=web-servers,api-servers=api")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("batch ") && l.ends_with("= 70ms")), "SYNCER_BATCH was not applied:\n{out}");
    assert!(out.lines().any(|l| l.starts_with("id ") && l.ends_with("= lb-1")), "{out}");
}

#[test]
fn registry_output_comes_from_its_variable_too() {
    // A bad REGISTRY_OUTPUT is refused by name before any node is asked: proof that it is read.
    // A port nothing listens on (taken from the OS, then let go).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{closed}");
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(binary("registry"));
        cmd.args(["status", "--registry", &url]).env_remove("REGISTRY_OUTPUT").envs(env.iter().copied());
        let out = cmd.output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = run(&[("REGISTRY_OUTPUT", "yaml")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("yaml") && err.contains("--output"), "{err}");
    let (_, err) = run(&[]);
    assert!(!err.contains("--output"), "without the variable, --output is not the problem: {err}");
}
