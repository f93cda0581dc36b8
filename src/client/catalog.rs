//! The local catalog of files offloaded with `poolfs put`: one manifest per name, kept
//! as JSON on the machine that put it (peers never see names).

use std::path::{Path, PathBuf};

use super::Manifest;

/// Why a catalog entry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A name that is not a plain file name.
    #[error("invalid name {0:?}: use letters, digits, '.', '-' and '_' (not starting with '.')")]
    BadName(String),
    /// No entry of this name (the name, then the catalog directory).
    #[error("no file named {0:?} in the catalog {1}")]
    Missing(String, PathBuf),
    /// An entry that cannot be encoded or decoded as JSON (today also the catalog's
    /// owner key failing to load).
    #[error("catalog entry {path}: {message}")]
    Corrupt {
        /// The entry's file (or the owner key file).
        path: PathBuf,
        /// Why it cannot be read.
        message: String,
    },
    /// Reading or writing the catalog failed.
    #[error("catalog {path}: {source}")]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The failure.
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

    /// Saves a manifest under `name` (as JSON), replacing any earlier one atomically.
    ///
    /// Errors: `CatalogError::BadName` for a name that is not a plain file name, `Io` if
    /// it cannot be written.
    pub fn save(&self, name: &str, m: &Manifest) -> Result<(), CatalogError> {
        let path = self.path(name)?;
        let bytes = serde_json::to_vec(m).map_err(|e| CatalogError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        crate::util::write_atomic(&path, &bytes).map_err(|source| CatalogError::Io { path, source })
    }

    /// Loads the manifest saved under `name`.
    ///
    /// Errors: `CatalogError::BadName`, `Missing` if there is no such entry, `Io` if it
    /// cannot be read, `Corrupt` if it is not a manifest.
    pub fn load(&self, name: &str) -> Result<Manifest, CatalogError> {
        let path = self.path(name)?;
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CatalogError::Missing(name.to_string(), self.dir.clone()))
            }
            Err(source) => return Err(CatalogError::Io { path, source }),
        };
        serde_json::from_slice(&bytes).map_err(|e| CatalogError::Corrupt {
            path,
            message: e.to_string(),
        })
    }

    /// The owner secret of the files in this catalog (`owner.key` beside the
    /// manifests), created the first time: without it they cannot be read back.
    pub fn owner_key(&self) -> Result<crate::trust::OwnerKey, CatalogError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| CatalogError::Io {
            path: self.dir.clone(),
            source,
        })?;
        crate::trust::OwnerKey::load_or_create(&self.dir).map_err(|e| CatalogError::Corrupt {
            path: self.dir.join(crate::trust::OWNER_KEY_FILE),
            message: e.to_string(),
        })
    }

    /// Removes the entry `name`.
    ///
    /// Errors: `CatalogError::BadName`, or `Io` (a missing entry included).
    pub fn remove(&self, name: &str) -> Result<(), CatalogError> {
        let path = self.path(name)?;
        std::fs::remove_file(&path).map_err(|source| CatalogError::Io { path, source })
    }
}
