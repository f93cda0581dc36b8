//! Where segments live: validated file ids, one directory per owner (its identity in
//! hex), and the measure of what each owner's directory holds on the disk.

use std::fs;
use std::path::Path;

use super::super::space;
use super::error::io_err;
use super::StoreError;
use crate::proto::Identity;

/// Accepts only short ids made of letters, digits, '-' and '_': nothing that a path
/// could interpret ('/', '.', NUL) can reach the filesystem: 1 to 64 bytes.
///
/// Errors: `StoreError::BadId` naming the id (cut to 80 characters).
pub fn validate_file_id(id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadId(id.chars().take(80).collect()))
    }
}

/// The directory name of an owner: its identity in hex.
pub(super) fn owner_dir_name(owner: &Identity) -> String {
    hex::encode(owner.0)
}

/// The owner a directory under `segments/` belongs to, if its name is one.
pub(super) fn owner_of_dir(name: &str) -> Option<Identity> {
    let bytes = hex::decode(name).ok()?;
    Some(Identity(bytes.try_into().ok()?))
}

/// Allocated bytes and number of the segment files under `dir/*/` (a directory per
/// file).
pub(super) fn measure_owner(dir: &Path) -> Result<(u64, u64), StoreError> {
    let (mut bytes, mut segments) = (0, 0);
    for file in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let file = file.map_err(io_err("read owner dir"))?;
        if !file.path().is_dir() {
            continue;
        }
        let (b, s) = measure_file(&file.path())?;
        bytes += b;
        segments += s;
    }
    Ok((bytes, segments))
}

/// Allocated bytes and number of the segment files in one file's directory.
pub(super) fn measure_file(dir: &Path) -> Result<(u64, u64), StoreError> {
    let (mut bytes, mut segments) = (0, 0);
    for seg in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let meta = seg
            .and_then(|s| s.metadata())
            .map_err(io_err("stat segment"))?;
        bytes += space::allocated(&meta);
        segments += 1;
    }
    Ok((bytes, segments))
}
