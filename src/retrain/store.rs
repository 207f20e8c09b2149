//! Model versions in the state directory: every model the daemon has run
//! with, which one is current, and where each came from, so that a swap can
//! be undone (`neurostimd model rollback`) and a restart resumes with the
//! model the daemon had adopted.
//!
//! ```text
//! STATE_DIR/models/registry.json
//! STATE_DIR/models/v1/NAME.onnx + NAME.json   (the configured model, copied)
//! STATE_DIR/models/v2/NAME.onnx + NAME.json   (retrained; card parent = v1)
//! ```
//! The registry is replaced atomically (write, then rename).

use crate::forecast::{card_path, sha256_hex};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path}: {what}")]
    Corrupt { path: String, what: String },
    #[error("{0}")]
    Rollback(String),
    #[error("the configured model: {0}")]
    Source(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.display().to_string(),
        error,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Version {
    pub version: u32,
    /// The ONNX file, relative to the models directory.
    pub file: String,
    pub onnx_sha256: String,
    pub parent: Option<u32>,
    pub created_unix_s: u64,
    /// Where it came from: `config: PATH` or `retrained: TRIGGER`.
    pub origin: String,
    /// Held-out RMSE (mV) at adoption, for retrained versions.
    pub holdout_rmse_mv: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub current: Option<u32>,
    pub versions: Vec<Version>,
    /// Versions made current, oldest first (rollback walks it back).
    pub history: Vec<u32>,
}

/// The model store of one state directory.
pub struct ModelStore {
    dir: PathBuf,
    pub registry: Registry,
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ModelStore {
    /// Open (or create) `STATE_DIR/models`.
    pub fn open(state_dir: &Path) -> Result<ModelStore, StoreError> {
        let dir = state_dir.join("models");
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let reg_path = dir.join("registry.json");
        let registry = match std::fs::read(&reg_path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                path: reg_path.display().to_string(),
                what: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry::default(),
            Err(e) => return Err(io(&reg_path)(e)),
        };
        Ok(ModelStore { dir, registry })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn save(&self) -> Result<(), StoreError> {
        let path = self.dir.join("registry.json");
        let tmp = self.dir.join("registry.json.tmp");
        let text = serde_json::to_string_pretty(&self.registry).expect("json") + "\n";
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    pub fn path_of(&self, v: &Version) -> PathBuf {
        self.dir.join(&v.file)
    }

    pub fn version(&self, n: u32) -> Option<&Version> {
        self.registry.versions.iter().find(|v| v.version == n)
    }

    pub fn current(&self) -> Option<&Version> {
        self.registry.current.and_then(|n| self.version(n))
    }

    fn next_version(&self) -> u32 {
        self.registry
            .versions
            .iter()
            .map(|v| v.version)
            .max()
            .unwrap_or(0)
            + 1
    }

    fn write_version(
        &mut self,
        name: &str,
        onnx: &[u8],
        card_json: &[u8],
        parent: Option<u32>,
        origin: String,
        holdout_rmse_mv: Option<f64>,
    ) -> Result<Version, StoreError> {
        let n = self.next_version();
        let vdir = self.dir.join(format!("v{n}"));
        std::fs::create_dir_all(&vdir).map_err(io(&vdir))?;
        let onnx_path = vdir.join(format!("{name}.onnx"));
        std::fs::write(&onnx_path, onnx).map_err(io(&onnx_path))?;
        let cp = card_path(&onnx_path);
        std::fs::write(&cp, card_json).map_err(io(&cp))?;
        let v = Version {
            version: n,
            file: format!("v{n}/{name}.onnx"),
            onnx_sha256: sha256_hex(onnx),
            parent,
            created_unix_s: now_s(),
            origin,
            holdout_rmse_mv,
        };
        self.registry.versions.push(v.clone());
        Ok(v)
    }

    /// The model to start with: the store's current version, unless the
    /// configured model is not one the store knows (a new configured model
    /// becomes a new current version). Returns its path and version.
    pub fn adopt(
        &mut self,
        configured: &crate::forecast::ModelSource,
    ) -> Result<(PathBuf, Version), StoreError> {
        let files = configured
            .read()
            .map_err(|e| StoreError::Source(e.to_string()))?;
        let onnx = files.onnx;
        let sha = sha256_hex(&onnx);
        let known_config = self
            .registry
            .versions
            .iter()
            .any(|v| v.onnx_sha256 == sha && v.origin.starts_with("config"));
        if let (true, Some(cur)) = (known_config, self.current()) {
            let cur = cur.clone();
            return Ok((self.path_of(&cur), cur));
        }
        let name = configured.stem();
        let parent = self.registry.current;
        let v = self.write_version(
            &name,
            &onnx,
            files.card_text.as_bytes(),
            parent,
            format!("config: {configured}"),
            None,
        )?;
        self.make_current(v.version)?;
        Ok((self.path_of(&v), v))
    }

    /// Add a retrained model (not yet current).
    pub fn add(
        &mut self,
        name: &str,
        onnx: &[u8],
        card_json: &[u8],
        origin: String,
        holdout_rmse_mv: f64,
    ) -> Result<(PathBuf, Version), StoreError> {
        let parent = self.registry.current;
        let v = self.write_version(name, onnx, card_json, parent, origin, Some(holdout_rmse_mv))?;
        self.save()?;
        Ok((self.path_of(&v), v))
    }

    pub fn make_current(&mut self, n: u32) -> Result<(), StoreError> {
        self.registry.current = Some(n);
        self.registry.history.push(n);
        self.save()
    }

    /// Make the previously current version current again. Returns (from,
    /// to).
    pub fn rollback(&mut self) -> Result<(Version, Version), StoreError> {
        let from = self.current().cloned().ok_or_else(|| {
            StoreError::Rollback("the state directory has no current model".into())
        })?;
        // The newest history entry before the current one that differs.
        let h = &self.registry.history;
        let to = h
            .iter()
            .rev()
            .skip_while(|&&n| n == from.version)
            .find(|&&n| n != from.version)
            .copied()
            .or(from.parent)
            .ok_or_else(|| {
                StoreError::Rollback(format!(
                    "model v{} is the first version; there is nothing to roll back to",
                    from.version
                ))
            })?;
        let to_v = self
            .version(to)
            .cloned()
            .ok_or_else(|| StoreError::Rollback(format!("version v{to} is not in the registry")))?;
        // Rolling back drops the rolled-back entry from the history, so a
        // second rollback goes one further back.
        while self.registry.history.last() == Some(&from.version) {
            self.registry.history.pop();
        }
        self.registry.current = Some(to);
        if self.registry.history.last() != Some(&to) {
            self.registry.history.push(to);
        }
        self.save()?;
        Ok((from, to_v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adopt_add_and_roll_back() {
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tmp.path().join("m.onnx");
        std::fs::write(&cfg, b"onnx-1").unwrap();
        std::fs::write(card_path(&cfg), crate::forecast::source::CA1_LSTM.card).unwrap();
        let src = crate::forecast::ModelSource::File(cfg.clone());
        let state = tmp.path().join("state");
        let mut s = ModelStore::open(&state).unwrap();
        let (p, v) = s.adopt(&src).unwrap();
        assert_eq!(v.version, 1);
        assert_eq!(std::fs::read(&p).unwrap(), b"onnx-1");
        assert!(s.rollback().is_err(), "nothing before v1");
        let (_, v2) = s
            .add("m", b"onnx-2", b"{}", "retrained: test".into(), 1.0)
            .unwrap();
        assert_eq!(v2.parent, Some(1));
        s.make_current(2).unwrap();
        // Restart: the store's current wins over the configured model.
        let mut s = ModelStore::open(&state).unwrap();
        assert_eq!(s.adopt(&src).unwrap().1.version, 2);
        let (from, to) = s.rollback().unwrap();
        assert_eq!((from.version, to.version), (2, 1));
        assert_eq!(
            ModelStore::open(&state).unwrap().current().unwrap().version,
            1
        );
        // A different configured model becomes current.
        std::fs::write(&cfg, b"onnx-3").unwrap();
        let mut s = ModelStore::open(&state).unwrap();
        assert_eq!(s.adopt(&src).unwrap().1.version, 3);
    }
}
