//! The last-known-good desired state on disk, so a syncer started while its source is down can
//! still put HAProxy right (docs/syncer.md, "How it works").

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::source::Snapshot;

pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        std::fs::create_dir_all(dir)?;
        Ok(StateDir { path: dir.join("desired.json") })
    }

    /// Replaces the saved state atomically (write, fsync, rename, fsync the directory).
    pub fn save(&self, snap: &Snapshot) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(snap).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The saved state; a missing file is `Ok(None)`, an unreadable one an error naming it.
    pub fn load(&self) -> Result<Option<Snapshot>, String> {
        match std::fs::read(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("{}: {e}", self.path.display())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Endpoint;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(s.load().unwrap(), None);
        let mut snap = Snapshot { revision: 42, ..Default::default() };
        snap.services
            .entry("web".into())
            .or_default()
            .insert("a".into(), Endpoint { address: "127.0.0.1".into(), port: 80, weight: 100, state: Default::default() });
        s.save(&snap).unwrap();
        assert_eq!(s.load().unwrap(), Some(snap));
        std::fs::write(s.path(), "{garbage").unwrap();
        assert!(s.load().unwrap_err().contains("desired.json"));
    }

    /// `desired.json` is an on-disk format: what an earlier build saved still loads.
    #[test]
    fn a_state_saved_by_an_earlier_build_loads() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        std::fs::write(s.path(), r#"{"revision":7,"services":{"web":{"a":{"addr":"10.0.0.5","port":8080,"weight":100,"state":"up"}}}}"#).unwrap();
        let snap = s.load().unwrap().unwrap();
        assert_eq!(snap.services["web"]["a"].address, "10.0.0.5");
    }
}
