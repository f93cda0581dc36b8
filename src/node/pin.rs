//! Whom a node takes ASSIGN from: the controller's static key, pinned on first use.
//!
//! Any holder of the pool key can send ASSIGN, which tells a node which controller to
//! report to. A node waiting for the controller's signal trusts the first ASSIGN and
//! keeps the sender's static key in `STORAGE/controller.pub`; from then on only that
//! key may assign it (the controller's key is persistent, so it survives restarts on
//! both sides). A node started with `--controller` has no pin to learn: it accepts
//! ASSIGN only when it names the controller it was given.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::trust::KEY_LEN;

/// The file holding the pinned controller key, in the node's storage.
pub const PIN_FILE: &str = "controller.pub";

/// The node's rule for ASSIGN.
pub struct ControllerPin {
    /// Where the pin is kept; `None` keeps it in memory only.
    path: Option<PathBuf>,
    configured: Option<SocketAddr>,
    key: Mutex<Option<[u8; KEY_LEN]>>,
}

impl ControllerPin {
    /// The pin kept in `storage` (if any) for a node given `configured` as controller.
    pub fn load(storage: &Path, configured: Option<SocketAddr>) -> io::Result<Self> {
        let path = storage.join(PIN_FILE);
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => Some(
                hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} is not a controller key; remove it to trust the next \
                                 controller that assigns this node",
                                path.display()
                            ),
                        )
                    })?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(ControllerPin {
            path: Some(path),
            configured,
            key: Mutex::new(key),
        })
    }

    /// A pin kept in memory only, for a handler run without storage (fuzzing).
    pub fn ephemeral() -> Self {
        ControllerPin {
            path: None,
            configured: None,
            key: Mutex::new(None),
        }
    }

    /// May the holder of `sender` assign this node to the controller at `controller`?
    /// The first sender is pinned when the node has neither a pin nor a configured
    /// controller.
    pub fn admit(&self, sender: &[u8; KEY_LEN], controller: SocketAddr) -> Result<(), String> {
        let mut key = self.key.lock().unwrap_or_else(|p| p.into_inner());
        match (*key, self.configured) {
            (Some(pinned), _) if pinned == *sender => Ok(()),
            (Some(_), _) => Err(format!(
                "this node takes ASSIGN only from the controller it first joined (key in \
                 {}; remove that file to move the node to another controller)",
                self.path
                    .as_deref()
                    .unwrap_or(Path::new(PIN_FILE))
                    .display()
            )),
            (None, Some(given)) if given == controller => Ok(()),
            (None, Some(given)) => Err(format!(
                "this node reports to the controller at {given} it was started with"
            )),
            (None, None) => {
                if let Some(path) = &self.path {
                    crate::util::write_atomic(path, hex::encode(sender).as_bytes())
                        .map_err(|e| format!("cannot pin the controller key: {e}"))?;
                }
                *key = Some(*sender);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_first_assigner_is_pinned_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let pin = ControllerPin::load(dir.path(), None).unwrap();
        assert!(pin.admit(&[1; 32], addr(1)).is_ok(), "first use pins");
        assert!(pin.admit(&[2; 32], addr(2)).is_err(), "another key");
        assert!(pin.admit(&[1; 32], addr(3)).is_ok(), "the controller moved");
        let again = ControllerPin::load(dir.path(), None).unwrap();
        assert!(
            again.admit(&[2; 32], addr(2)).is_err(),
            "the pin is on disk"
        );
        assert!(again.admit(&[1; 32], addr(1)).is_ok());
    }

    #[test]
    fn a_configured_controller_is_not_replaced_by_assign() {
        let dir = tempfile::tempdir().unwrap();
        let pin = ControllerPin::load(dir.path(), Some(addr(7))).unwrap();
        assert!(pin.admit(&[1; 32], addr(7)).is_ok());
        assert!(pin.admit(&[2; 32], addr(8)).is_err());
        assert!(!dir.path().join(PIN_FILE).exists(), "nothing learned");
        std::fs::write(dir.path().join(PIN_FILE), "zz").unwrap();
        assert!(
            ControllerPin::load(dir.path(), None).is_err(),
            "a corrupt pin"
        );
    }
}
