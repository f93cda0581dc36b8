//! Version tags of the JSON state files (controller registry, `up`'s state, `put`'s
//! catalog entries): one `"version"` field beside the record's own fields, so that
//! their format can change without refusing the files an older poolfs wrote.
//!
//! A file without the field was written before the tag existed and reads as version 1;
//! a file of a version newer than the reader knows is refused with the file and the
//! version named, before its fields are decoded (a newer layout may not decode as
//! today's, and must not be half-read and then overwritten).

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The name of the tag field in every versioned JSON file.
const FIELD: &str = "version";

/// Why a versioned JSON file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The file is not the JSON of its record (serde_json's reason).
    #[error("{path} is corrupt: {message}")]
    Corrupt {
        /// The file, as given by the caller.
        path: String,
        /// serde_json's reason.
        message: String,
    },
    /// The file was written by a newer poolfs, in a version this one cannot read.
    #[error("{path} has format version {found}, newer than {known}, the newest this poolfs reads; use a newer poolfs")]
    TooNew {
        /// The file, as given by the caller.
        path: String,
        /// The file's version.
        found: u32,
        /// The newest version this poolfs reads.
        known: u32,
    },
}

/// Only the tag, read first: every other field is ignored at this stage.
#[derive(Deserialize)]
struct Tag {
    #[serde(default = "first_version")]
    version: u32,
}

/// The version of a file written before versions existed.
fn first_version() -> u32 {
    1
}

/// Decodes `bytes`, the JSON object of a `T` written as version `current` or older
/// (a file without the tag is version 1), and returns it with its version so the
/// caller can convert an older layout.
///
/// Errors: `TooNew` for a version above `current`, `Corrupt` for anything that is
/// not a JSON object of `T`; both name `path`.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    current: u32,
    path: &Path,
) -> Result<(u32, T), VersionError> {
    let corrupt = |e: serde_json::Error| VersionError::Corrupt {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let tag: Tag = serde_json::from_slice(bytes).map_err(corrupt)?;
    if tag.version > current {
        return Err(VersionError::TooNew {
            path: path.display().to_string(),
            found: tag.version,
            known: current,
        });
    }
    // `T` ignores the tag field: none of these records denies unknown fields.
    let value = serde_json::from_slice(bytes).map_err(corrupt)?;
    Ok((tag.version, value))
}

/// Encodes `value` (a struct, so a JSON object) as pretty JSON with `"version":
/// version` added to its fields.
///
/// Errors: `Corrupt` naming `path` if `value` does not serialize to a JSON object, or
/// already has a field named `version`.
pub fn encode<T: Serialize>(value: &T, version: u32, path: &Path) -> Result<Vec<u8>, VersionError> {
    let corrupt = |message: String| VersionError::Corrupt {
        path: path.display().to_string(),
        message,
    };
    let mut json = serde_json::to_value(value).map_err(|e| corrupt(e.to_string()))?;
    let Some(fields) = json.as_object_mut() else {
        return Err(corrupt("the record is not a JSON object".into()));
    };
    if fields.insert(FIELD.into(), version.into()).is_some() {
        return Err(corrupt(format!("the record has its own {FIELD:?} field")));
    }
    serde_json::to_vec_pretty(&json).map_err(|e| corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Rec {
        name: String,
        size: u64,
    }

    fn rec() -> Rec {
        Rec {
            name: "a".into(),
            size: 7,
        }
    }

    #[test]
    fn a_file_without_a_version_reads_as_version_1() {
        let bytes = serde_json::to_vec(&rec()).unwrap();
        let (v, r): (u32, Rec) = decode(&bytes, 1, Path::new("f.json")).unwrap();
        assert_eq!((v, r), (1, rec()));
    }

    #[test]
    fn a_written_record_carries_its_version_and_reads_back() {
        let bytes = encode(&rec(), 3, Path::new("f.json")).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["version"], 3);
        let (v, r): (u32, Rec) = decode(&bytes, 3, Path::new("f.json")).unwrap();
        assert_eq!((v, r), (3, rec()));
    }

    #[test]
    fn a_newer_version_is_refused_naming_the_file_and_the_version() {
        // A newer layout whose fields today's `Rec` could not even decode.
        let bytes = br#"{"version": 2, "other": true}"#;
        let err = decode::<Rec>(bytes, 1, Path::new("/s/f.json")).unwrap_err();
        assert!(matches!(
            err,
            VersionError::TooNew {
                found: 2,
                known: 1,
                ..
            }
        ));
        let text = err.to_string();
        assert!(
            text.contains("/s/f.json") && text.contains("version 2"),
            "{text}"
        );
    }

    #[test]
    fn a_record_that_is_not_json_is_reported_corrupt() {
        let err = decode::<Rec>(b"not json", 1, Path::new("f.json")).unwrap_err();
        assert!(matches!(err, VersionError::Corrupt { .. }), "{err}");
    }
}
