//! The operator commands: `registry ls`, `status`, `balancers`, `deregister`, `token`. Each
//! returns the text to print (or writes to a writer it is given), so tests can check it without
//! a terminal. What they share is here: the output format, the table, times.

pub mod deregister;
pub mod ls;
pub mod status;

use client::Client;

pub use ls::{ls, removed, Query, StateFilter};
pub use status::{balancers, status};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let fmt = |cells: Vec<&str>| {
        let line: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        line.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = fmt(header.to_vec());
    for r in rows {
        out += &fmt(r.iter().map(String::as_str).collect());
    }
    out
}

/// One node's failure for a line of its own: the node and the cause, without the
/// "no registry node could serve the request" preamble a single node does not need.
pub fn short(e: &client::Error) -> String {
    match e {
        client::Error::Unavailable(why) => why.clone(),
        other => other.to_string(),
    }
}

fn ms(v: u64) -> String {
    format!("{:.1}s", v as f64 / 1000.0)
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds.
fn utc(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}

/// `registry token list`: the cluster's tokens, never their secrets.
pub async fn tokens(client: &Client, output: Output) -> Result<String, client::Error> {
    let list = client.tokens().await?;
    if output == Output::Json {
        return Ok(serde_json::to_string_pretty(&list).expect("serializes") + "\n");
    }
    if !list.enabled {
        return Ok("ACLs are off in this cluster (start a node with --acl-bootstrap-token-file to turn them on)\n".into());
    }
    let rows: Vec<Vec<String>> = list
        .tokens
        .iter()
        .map(|t| vec![t.id.to_string(), t.scopes.join(" "), t.description.clone(), t.created_ms.map(utc).unwrap_or_else(|| "-".into())])
        .collect();
    Ok(table(&["ID", "SCOPES", "DESCRIPTION", "CREATED"], &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A     BB\nlong  x\n");
    }
}

#[cfg(test)]
mod removal_tests {
    #[test]
    fn utc_times() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }
}

/// A secret written to a new file beside its destination (mode 0600, a random name), moved
/// there by `commit`; removed if dropped uncommitted (the OS removes nothing after a SIGKILL,
/// but a leftover has a random name and blocks no later run). `registry token create --out`
/// stages the token before asking for it, so a token is never minted with nowhere to go.
pub struct StagedSecret {
    tmp: tempfile::NamedTempFile,
    path: std::path::PathBuf,
}

pub fn stage_secret(path: &std::path::Path, secret: &str) -> Result<StagedSecret, String> {
    use std::io::Write as _;
    // `symlink_metadata`: a dangling symlink is "something there" too.
    if path.symlink_metadata().is_ok() {
        return Err(format!("{} exists; not overwriting it", path.display()));
    }
    let name = path.file_name().ok_or_else(|| format!("{} is not a file path", path.display()))?.to_string_lossy().into_owned();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(&format!(".{name}.")).tempfile_in(dir).map_err(|e| format!("creating a file in {}: {e}", dir.display()))?;
    tmp.write_all(format!("{secret}\n").as_bytes()).and_then(|_| tmp.as_file().sync_all()).map_err(|e| format!("writing {}: {e}", tmp.path().display()))?;
    Ok(StagedSecret { tmp, path: path.to_path_buf() })
}

impl StagedSecret {
    /// Moves the secret into place; a file that appeared there meanwhile is not overwritten.
    pub fn commit(self) -> Result<(), String> {
        let path = self.path;
        self.tmp.persist_noclobber(&path).map(|_| ()).map_err(|e| format!("writing {}: {}", path.display(), e.error))
    }
}

#[cfg(test)]
mod staged_tests {
    use super::*;

    #[test]
    fn a_staged_secret_lands_only_on_commit_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        drop(stage_secret(&path, "abc").unwrap());
        assert!(!path.exists() && std::fs::read_dir(dir.path()).unwrap().next().is_none(), "an uncommitted secret left a file");
        stage_secret(&path, "abc").unwrap().commit().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\n");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(stage_secret(&path, "xyz").is_err(), "overwrote an existing file");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "abc\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let dangling = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(stage_secret(&dangling, "xyz").is_err(), "a dangling symlink counted as free");
        // Another run's leftover temporary file does not block this one.
        std::fs::write(dir.path().join(".tok2.tmp"), "").unwrap();
        stage_secret(&dir.path().join("tok2"), "def").unwrap().commit().unwrap();
    }
}
