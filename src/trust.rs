//! The pool's secrets: the shared pool key (a file every member holds), each member's
//! Noise static keypair (its persistent identity), and the owner secret that shard keys
//! derive from (`owner.key`, never sent), and that secret's recovery code (`recovery`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

use crate::proto::Identity;
use crate::util::default_data_dir;

mod recovery;

pub use recovery::{
    new_owner_key_notice, read_recovery_code, OwnerKeyWatch, RecoveryCodeError, RECOVERY_WORDS,
};

/// Length of the pool key and of Noise static keys.
pub const KEY_LEN: usize = 32;
/// Name of a member's static private key, in its storage directory.
pub const NODE_KEY_FILE: &str = "node.key";
/// The owner secret's file name: shards of this owner's files are encrypted with keys
/// derived from it, so losing it loses the files.
pub const OWNER_KEY_FILE: &str = "owner.key";
/// Name of the static private key of `poolfs put`/`get`, in the catalog directory: the
/// segments of the files in a catalog belong to this key.
pub const CLIENT_KEY_FILE: &str = "client.key";

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No pool key at this path.
    #[error(
        "no pool key at {0}: copy the pool's key there from a member, or give its path with \
         --key FILE (key=FILE for mount -t poolfs); `poolfs init` makes the key of a new \
         pool"
    )]
    Missing(PathBuf),
    /// `init` found a pool key at this path already.
    #[error("a pool key already exists at {0}; remove it first to make a new pool")]
    Exists(PathBuf),
    /// The file at this path is not a key file.
    #[error("{0} is not a key file (expected 64 hex digits)")]
    Corrupt(PathBuf),
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The key file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A key file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The key file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// No owner key in this storage directory (no mount has used it yet).
    #[error(
        "no owner key at {0}: no mount has used this storage directory yet (the first \
         `poolfs mount` makes one; `poolfs key import` restores one from its recovery code)"
    )]
    NoOwnerKey(PathBuf),
    /// A different owner key is already at this path: replacing it would lose the files
    /// that key encrypts.
    #[error(
        "{0} holds a different owner key; it was left as it is (the files it encrypts \
         would be lost without it): use another --storage directory, or move that file \
         away first"
    )]
    OtherOwnerKey(PathBuf),
    /// The crypto library cannot make a Curve25519 keypair.
    #[error("no Curve25519 support in the crypto library")]
    Crypto,
}

/// The pool secret: whoever holds it may join, store and read the pool.
#[derive(Clone, PartialEq, Eq)]
pub struct PoolKey([u8; KEY_LEN]);

impl std::fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolKey(..)")
    }
}

impl PoolKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        PoolKey(rand::random())
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        PoolKey(bytes)
    }

    /// The secret bytes.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Loads the key kept at `path` (64 hex digits).
    ///
    /// Errors: `KeyError::Missing` if there is no file, `Corrupt` if it is not a key
    /// file, `Read` for any other failure.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        read_key_file(path).map(PoolKey)
    }

    /// Creates a new random key at `path` (mode 0600); never overwrites one.
    ///
    /// Errors: `KeyError::Exists` if a key is there already, `Write` if it cannot be
    /// written.
    pub fn create(path: &Path) -> Result<Self, KeyError> {
        let key = PoolKey::generate();
        write_new_key_file(path, &key.0)?;
        Ok(key)
    }

    /// Loads the key at `path`, creating it first if there is none (for `poolfs up`).
    /// Errors as `load` and `create`.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        load_or_create_key_file(path).map(PoolKey)
    }
}

/// Where the pool key lives when `--key` is not given: `DATA_DIR/pool.key`.
pub fn default_key_path() -> PathBuf {
    default_data_dir().join("pool.key")
}

/// An owner's secret: per-file shard keys are derived from it. It never leaves the
/// owner's machine; peers holding the shards cannot decrypt them.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnerKey([u8; KEY_LEN]);

impl std::fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerKey(..)")
    }
}

impl OwnerKey {
    /// The owner secret kept in `dir/owner.key`, created (mode 0600) the first time.
    /// Errors as `PoolKey::load_or_create`.
    pub fn load_or_create(dir: &Path) -> Result<Self, KeyError> {
        load_or_create_key_file(&dir.join(OWNER_KEY_FILE)).map(OwnerKey)
    }

    /// The owner secret kept in `dir/owner.key`; never makes one.
    ///
    /// Errors: `KeyError::NoOwnerKey` if there is none, `Corrupt` if the file is not a
    /// key file, `Read` for any other failure.
    pub fn load(dir: &Path) -> Result<Self, KeyError> {
        match read_key_file(&dir.join(OWNER_KEY_FILE)) {
            Err(KeyError::Missing(path)) => Err(KeyError::NoOwnerKey(path)),
            other => other.map(OwnerKey),
        }
    }

    /// Writes `key` to `dir/owner.key` (mode 0600, `dir` made if missing), synced to
    /// disk. The same key already there is fine; a different one is never replaced.
    ///
    /// Errors: `KeyError::OtherOwnerKey` if a different key is there, `Corrupt` if the
    /// file there is not a key file, `Write` or `Read` if the disk fails.
    pub fn save_new(dir: &Path, key: &OwnerKey) -> Result<(), KeyError> {
        let path = dir.join(OWNER_KEY_FILE);
        match write_new_key_file(&path, &key.0) {
            Ok(()) => {}
            Err(KeyError::Exists(_)) => {
                return match read_key_file(&path)? {
                    same if same == key.0 => Ok(()),
                    _ => Err(KeyError::OtherOwnerKey(path)),
                }
            }
            Err(e) => return Err(e),
        }
        // The link to the key is a directory entry: sync it too, or a power cut right
        // after an import could leave no key while the user believes it restored.
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| KeyError::Write { path, source })
    }

    /// The secret bytes.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A key from known bytes (tests).
    pub fn from_bytes(secret: [u8; KEY_LEN]) -> Self {
        OwnerKey(secret)
    }
}

/// What one end of a connection proves: the pool key and its own static keypair.
#[derive(Clone)]
pub struct Credentials {
    psk: [u8; KEY_LEN],
    private: [u8; KEY_LEN],
    public: [u8; KEY_LEN],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials(public {})", hex::encode(&self.public[..8]))
    }
}

impl Credentials {
    /// The pool key with a fresh static keypair: for clients that need no persistent
    /// identity and store nothing (status, scan).
    ///
    /// Errors: `KeyError::Crypto` if snow's resolver offers no Curve25519.
    pub fn ephemeral(key: &PoolKey) -> Result<Self, KeyError> {
        Credentials::with_private(key, rand::random())
    }

    /// The pool key with the persistent keypair kept in `dir/node.key` (created, mode
    /// 0600, the first time): a member's identity. Errors as `PoolKey::load_or_create`,
    /// and `KeyError::Crypto`.
    pub fn persistent(key: &PoolKey, dir: &Path) -> Result<Self, KeyError> {
        Credentials::persistent_at(key, &dir.join(NODE_KEY_FILE))
    }

    /// The pool key with the persistent keypair kept in the file `path` (created, mode
    /// 0600, the first time). Segments a node stores belong to this keypair. Errors as
    /// `persistent`.
    pub fn persistent_at(key: &PoolKey, path: &Path) -> Result<Self, KeyError> {
        Credentials::with_private(key, load_or_create_key_file(path)?)
    }

    /// The pool key with the keypair kept in the file `path`, which must exist. Errors
    /// as `PoolKey::load`, and `KeyError::Crypto`.
    pub fn load_at(key: &PoolKey, path: &Path) -> Result<Self, KeyError> {
        Credentials::with_private(key, read_key_file(path)?)
    }

    /// The pool key with the static keypair whose private half is `private` (an
    /// identity derived from another secret, such as a namespace's from its owner's).
    /// Errors: `KeyError::Crypto`.
    pub fn from_private(key: &PoolKey, private: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        Credentials::with_private(key, private)
    }

    fn with_private(key: &PoolKey, private: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .ok_or(KeyError::Crypto)?;
        dh.set(&private);
        let public: [u8; KEY_LEN] = dh.pubkey().try_into().map_err(|_| KeyError::Crypto)?;
        Ok(Credentials {
            psk: *key.bytes(),
            private,
            public,
        })
    }

    /// The pool key, used as the Noise pre-shared key.
    pub fn psk(&self) -> &[u8; KEY_LEN] {
        &self.psk
    }

    /// The static private key.
    pub fn private_key(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// The static public key that peers see after the handshake.
    pub fn public_key(&self) -> &[u8; KEY_LEN] {
        &self.public
    }

    /// The identity a member with this keypair claims (bound to its public key).
    pub fn identity(&self) -> Identity {
        identity_of(&self.public)
    }
}

/// The identity bound to a static public key: the first 16 bytes of its BLAKE3 hash,
/// so an id can only be claimed by whoever holds the matching private key.
pub fn identity_of(public: &[u8; KEY_LEN]) -> Identity {
    let hash = blake3::hash(public);
    let mut id = [0u8; 16];
    id.copy_from_slice(&hash.as_bytes()[..16]);
    Identity(id)
}

fn read_key_file(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(KeyError::Missing(path.to_path_buf()))
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(KeyError::Corrupt(path.to_path_buf()))
        }
        Err(source) => {
            return Err(KeyError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "{} is readable by other users; `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
        .ok_or_else(|| KeyError::Corrupt(path.to_path_buf()))
}

fn write_new_key_file(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(write_err)?;
    }
    // Written whole under a private name, then linked into place: a reader never sees
    // a half-written key, and of two processes creating it at once exactly one wins.
    let tmp = path.with_extension(format!("new-{}", hex::encode(rand::random::<[u8; 8]>())));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
        f.sync_all()?;
        fs::hard_link(&tmp, path)
    })();
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(KeyError::Exists(path.to_path_buf()))
        }
        Err(e) => Err(write_err(e)),
    }
}

/// The key kept at `path`, made (random, mode 0600) if there is none yet; safe when
/// several processes do this at once.
fn load_or_create_key_file(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    match read_key_file(path) {
        Err(KeyError::Missing(_)) => {
            let fresh = rand::random();
            match write_new_key_file(path, &fresh) {
                Ok(()) => Ok(fresh),
                // Another process made it first: use theirs.
                Err(KeyError::Exists(_)) => read_key_file(path),
                Err(e) => Err(e),
            }
        }
        other => other,
    }
}

/// The 32 bytes of the key file at `path` (a node's `node.key`, to keep it in a
/// namespace's root). Errors as `PoolKey::load`.
pub fn read_key_bytes(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    read_key_file(path)
}

/// Writes a new key file at `path` (mode 0600) holding `key`; never overwrites one
/// (a recovered node key). Errors: `KeyError::Exists` if one is there, `Write`.
pub fn write_key_bytes(path: &Path, key: &[u8; KEY_LEN]) -> Result<(), KeyError> {
    write_new_key_file(path, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/pool.key");
        assert!(matches!(PoolKey::load(&path), Err(KeyError::Missing(_))));
        let key = PoolKey::create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(PoolKey::create(&path), Err(KeyError::Exists(_))));
        assert_eq!(PoolKey::load(&path).unwrap(), key);
        assert_eq!(PoolKey::load_or_create(&path).unwrap(), key);
        fs::write(&path, "nothex").unwrap();
        assert!(matches!(PoolKey::load(&path), Err(KeyError::Corrupt(_))));
    }

    #[test]
    fn an_owner_key_is_loaded_but_never_made_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        let err = OwnerKey::load(&storage).unwrap_err();
        assert!(matches!(err, KeyError::NoOwnerKey(_)), "{err}");
        assert!(err.to_string().contains("no mount has used"), "{err}");
        assert!(!storage.exists(), "load must not make anything");

        let key = OwnerKey::from_bytes([42; KEY_LEN]);
        OwnerKey::save_new(&storage, &key).unwrap();
        let file = storage.join(OWNER_KEY_FILE);
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(OwnerKey::load(&storage).unwrap(), key);
        // The same key again: nothing to do. A mount made it the same way.
        OwnerKey::save_new(&storage, &key).unwrap();
        assert_eq!(OwnerKey::load_or_create(&storage).unwrap(), key);

        let before = fs::read(&file).unwrap();
        let other = OwnerKey::from_bytes([43; KEY_LEN]);
        let err = OwnerKey::save_new(&storage, &other).unwrap_err();
        assert!(matches!(err, KeyError::OtherOwnerKey(_)), "{err}");
        assert!(err.to_string().contains("different owner key"), "{err}");
        assert_eq!(fs::read(&file).unwrap(), before, "the old key must stay");

        fs::write(&file, "garbage").unwrap();
        assert!(matches!(
            OwnerKey::load(&storage),
            Err(KeyError::Corrupt(_))
        ));
        assert!(matches!(
            OwnerKey::save_new(&storage, &key),
            Err(KeyError::Corrupt(_))
        ));
    }

    #[test]
    fn node_keypair_persists() {
        let dir = tempfile::tempdir().unwrap();
        let key = PoolKey::generate();
        let a = Credentials::persistent(&key, dir.path()).unwrap();
        let b = Credentials::persistent(&key, dir.path()).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(a.identity(), b.identity());
        let mode = fs::metadata(dir.path().join(NODE_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let c = Credentials::ephemeral(&key).unwrap();
        assert_ne!(a.public_key(), c.public_key());
    }
}
