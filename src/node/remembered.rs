//! The id a node was given, remembered on its own disk (`STORAGE/node.id`), so that a
//! controller that lost its registry gives every node its old id back: manifests name
//! a shard's holder by id, and a node under another id would hold nothing they name.

use std::io;
use std::path::{Path, PathBuf};

use crate::proto::NodeId;

/// The file, in the node's storage directory, holding its id as decimal text.
pub const NODE_ID_FILE: &str = "node.id";

fn file(storage: &Path) -> PathBuf {
    storage.join(NODE_ID_FILE)
}

/// The id the node with storage directory `storage` was last given (the decimal text
/// in `storage/node.id`); `None` if it was never given one. A file that cannot be read
/// or holds no id (not a decimal number, or 0, which is never handed out) is warned
/// about and taken as none: the controller then hands out a fresh id.
pub fn load_node_id(storage: &Path) -> Option<NodeId> {
    let path = file(storage);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            log::warn!(
                "cannot read the remembered node id in {}: {e}; joining as a new node",
                path.display()
            );
            return None;
        }
    };
    match text.trim().parse::<NodeId>() {
        Ok(id) if id > 0 => Some(id),
        _ => {
            log::warn!(
                "{} does not hold a node id ({:?}); ignoring it and joining as a new node",
                path.display(),
                text.chars().take(40).collect::<String>()
            );
            None
        }
    }
}

/// Remembers `id` as the id of the node with storage directory `storage`: written to
/// `storage/node.id` atomically (a temporary file renamed over it, both synced), so a
/// crash leaves the old id or the new one, never a torn file.
///
/// Errors: the I/O error of creating the directory, writing, syncing or renaming.
pub fn save_node_id(storage: &Path, id: NodeId) -> io::Result<()> {
    crate::util::write_atomic(&file(storage), format!("{id}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_node_id_loads_back_and_is_replaced_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_node_id(dir.path()), None, "never given one");
        save_node_id(dir.path(), 7).unwrap();
        assert_eq!(load_node_id(dir.path()), Some(7));
        save_node_id(dir.path(), 12).unwrap();
        assert_eq!(load_node_id(dir.path()), Some(12));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![NODE_ID_FILE], "no temporary file left");
    }

    #[test]
    fn a_corrupt_node_id_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for junk in ["", "seven", "0", "-3", "99999999999", "4 5"] {
            std::fs::write(dir.path().join(NODE_ID_FILE), junk).unwrap();
            assert_eq!(load_node_id(dir.path()), None, "{junk:?}");
        }
        // A directory where the file should be cannot be read as one.
        std::fs::remove_file(dir.path().join(NODE_ID_FILE)).unwrap();
        std::fs::create_dir(dir.path().join(NODE_ID_FILE)).unwrap();
        assert_eq!(load_node_id(dir.path()), None);
    }
}
