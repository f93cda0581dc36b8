//! The local catalog of files offloaded with `poolfs put`: one manifest per name, kept
//! as JSON on the machine that put it (peers never see names).

use std::path::{Path, PathBuf};

use super::Manifest;

/// The version of a catalog entry this poolfs writes (see `crate::versioned`; entries
/// from before the tag read as 1).
const ENTRY_VERSION: u32 = 1;

/// Why a catalog entry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A name that is not 1 to 200 letters, digits, '.', '-' or '_' (not starting with
    /// '.'): names become file names in the catalog directory.
    #[error("invalid name {0:?}: use letters, digits, '.', '-' and '_' (not starting with '.')")]
    BadName(String),
    /// No entry of that name (the name, the catalog directory).
    #[error("no file named {0:?} in the catalog {1}")]
    Missing(String, PathBuf),
    /// An entry that is not a manifest (serde_json's reason), or a manifest that
    /// cannot be written as one.
    #[error("catalog entry {path}: {message}")]
    Corrupt {
        /// The entry's file.
        path: PathBuf,
        /// serde_json's reason.
        message: String,
    },
    /// An entry written by a newer poolfs, in a version this one cannot read (the file,
    /// the version and the newest known are in the message).
    #[error("catalog entry {0}")]
    Version(crate::versioned::VersionError),
    /// The catalog's owner key (`owner.key`) could not be read or made.
    #[error("catalog owner key: {0}")]
    Key(#[from] crate::trust::KeyError),
    /// Reading, writing or removing a file of the catalog failed.
    #[error("catalog {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A directory of manifests.
pub struct Catalog {
    dir: PathBuf,
}

impl Catalog {
    /// The catalog kept in `dir`.
    pub fn new(dir: &Path) -> Self {
        Catalog {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, name: &str) -> Result<PathBuf, CatalogError> {
        let ok = !name.is_empty()
            && !name.starts_with('.')
            && name.len() <= 200
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !ok {
            return Err(CatalogError::BadName(name.to_string()));
        }
        Ok(self.dir.join(format!("{name}.manifest.json")))
    }

    /// Saves a manifest under `name`, replacing any earlier one atomically.
    pub fn save(&self, name: &str, m: &Manifest) -> Result<(), CatalogError> {
        let path = self.path(name)?;
        let bytes = crate::versioned::encode(m, ENTRY_VERSION, &path).map_err(|e| match e {
            crate::versioned::VersionError::Corrupt { message, .. } => CatalogError::Corrupt {
                path: path.clone(),
                message,
            },
            e => CatalogError::Version(e),
        })?;
        crate::util::write_atomic(&path, &bytes).map_err(|source| CatalogError::Io { path, source })
    }

    /// Loads the manifest saved under `name`.
    pub fn load(&self, name: &str) -> Result<Manifest, CatalogError> {
        let path = self.path(name)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CatalogError::Missing(name.to_string(), self.dir.clone()))
            }
            Err(source) => return Err(CatalogError::Io { path, source }),
        };
        match crate::versioned::decode(&bytes, ENTRY_VERSION, &path) {
            Ok((_, manifest)) => Ok(manifest),
            Err(e @ crate::versioned::VersionError::TooNew { .. }) => Err(CatalogError::Version(e)),
            Err(crate::versioned::VersionError::Corrupt { message, .. }) => {
                Err(CatalogError::Corrupt { path, message })
            }
        }
    }

    /// The owner secret of the files in this catalog (`owner.key` beside the
    /// manifests), created the first time: without it they cannot be read back.
    pub fn owner_key(&self) -> Result<crate::trust::OwnerKey, CatalogError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| CatalogError::Io {
            path: self.dir.clone(),
            source,
        })?;
        Ok(crate::trust::OwnerKey::load_or_create(&self.dir)?)
    }

    /// Removes the entry `name`.
    pub fn remove(&self, name: &str) -> Result<(), CatalogError> {
        let path = self.path(name)?;
        std::fs::remove_file(&path).map_err(|source| CatalogError::Io { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Layout, Placement};

    /// A manifest with a stored stripe and inline bytes, so every part goes to disk.
    fn manifest() -> Manifest {
        let mut m = Manifest::new(Placement {
            file_id: "f1".into(),
            layout: Layout {
                k: 2,
                m: 1,
                shard_size: 16,
            },
            holders: Vec::new(),
        });
        m.size = 40;
        m.set_stripe(
            3,
            crate::client::StripeRecord {
                sums: Vec::new(),
                moved: Vec::new(),
                seal: Some(crate::client::Sealing { salt: [7; 16] }),
                slot: 2,
            },
        );
        m.reserved.insert(5..9);
        m.inline = Some(b"small".to_vec());
        m
    }

    #[test]
    fn a_catalog_entry_saved_before_versions_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        // The entry as `put` wrote it before the version tag: the bare manifest.
        let old = serde_json::to_vec(&manifest()).unwrap();
        std::fs::write(dir.path().join("a.manifest.json"), old).unwrap();
        assert_eq!(Catalog::new(dir.path()).load("a").unwrap(), manifest());
    }

    #[test]
    fn a_saved_catalog_entry_carries_its_version_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::new(dir.path());
        catalog.save("a", &manifest()).unwrap();
        let bytes = std::fs::read(dir.path().join("a.manifest.json")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["version"], ENTRY_VERSION);
        assert_eq!(catalog.load("a").unwrap(), manifest());
    }

    #[test]
    fn a_catalog_entry_of_a_newer_version_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.manifest.json");
        let newer = format!(r#"{{"version": {}, "chunks": []}}"#, ENTRY_VERSION + 1);
        std::fs::write(&path, &newer).unwrap();
        let err = Catalog::new(dir.path()).load("a").unwrap_err();
        assert!(matches!(err, CatalogError::Version(_)), "{err}");
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("version {}", ENTRY_VERSION + 1)),
            "{text}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), newer);
    }

    #[test]
    fn a_catalog_entry_that_is_not_a_manifest_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.manifest.json"), b"{\"size\": 1}").unwrap();
        let err = Catalog::new(dir.path()).load("a").unwrap_err();
        assert!(matches!(err, CatalogError::Corrupt { .. }), "{err}");
    }
}
