//! Shard encryption: every shard is sealed with XChaCha20-Poly1305 under a key derived
//! from the owner's secret and the file id, so the nodes holding it learn only sizes.
//!
//! Nonces never repeat under one key: each write of a stripe draws a fresh random
//! 128-bit salt (kept in the manifest) and shard i uses `salt || i`. Rebuilding a shard
//! (healing, repair) re-seals the same plaintext under the same nonce, which yields the
//! same ciphertext and so reveals nothing new. The stripe and shard numbers are bound
//! as associated data, so a shard moved to another place fails to open.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Key, Tag, XChaCha20Poly1305, XNonce};

use crate::trust::OwnerKey;

/// A Poly1305 tag: proves a shard's bytes are those its owner sealed.
pub type SealTag = [u8; 16];
/// The per-stripe-write random part of every shard nonce.
pub type Salt = [u8; 16];

/// BLAKE3 key-derivation context: a file key is never any other key.
const FILE_KEY_CONTEXT: &str = "poolfs 2026-11 shard key for one file, v1";

/// A shard could not be opened: it was not sealed by this owner for this place.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard} of stripe {stripe} fails authentication (tampered, or not ours)")]
pub struct OpenError {
    pub stripe: u64,
    pub shard: usize,
}

/// The cipher for the shards of one file.
pub struct FileCipher {
    aead: XChaCha20Poly1305,
    file_id: Vec<u8>,
}

impl FileCipher {
    /// The cipher for `file_id`, keyed from the owner's secret.
    pub fn new(owner: &OwnerKey, file_id: &str) -> Self {
        let mut material = Vec::with_capacity(32 + file_id.len());
        material.extend_from_slice(owner.bytes());
        material.extend_from_slice(file_id.as_bytes());
        let key = blake3::derive_key(FILE_KEY_CONTEXT, &material);
        FileCipher {
            aead: XChaCha20Poly1305::new(Key::from_slice(&key)),
            file_id: file_id.as_bytes().to_vec(),
        }
    }

    fn nonce(salt: &Salt, shard: usize) -> XNonce {
        let mut n = [0u8; 24];
        n[..16].copy_from_slice(salt);
        n[16..20].copy_from_slice(&(shard as u32).to_le_bytes());
        XNonce::from(n)
    }

    fn aad(&self, stripe: u64, shard: usize) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.file_id.len() + 12);
        aad.extend_from_slice(&self.file_id);
        aad.extend_from_slice(&stripe.to_le_bytes());
        aad.extend_from_slice(&(shard as u32).to_le_bytes());
        aad
    }

    /// Encrypts shard `shard` of stripe `stripe` in place; returns its tag.
    pub fn seal(&self, salt: &Salt, stripe: u64, shard: usize, bytes: &mut [u8]) -> SealTag {
        let tag = self
            .aead
            .encrypt_in_place_detached(&Self::nonce(salt, shard), &self.aad(stripe, shard), bytes)
            // Only fails past 256 GiB per message; shards are a few MiB at most.
            .unwrap_or_default();
        tag.into()
    }

    /// Decrypts a sealed shard in place, refusing it unless `tag` proves it intact.
    pub fn open(
        &self,
        salt: &Salt,
        stripe: u64,
        shard: usize,
        bytes: &mut [u8],
        tag: &SealTag,
    ) -> Result<(), OpenError> {
        self.aead
            .decrypt_in_place_detached(
                &Self::nonce(salt, shard),
                &self.aad(stripe, shard),
                bytes,
                Tag::from_slice(tag),
            )
            .map_err(|_| OpenError { stripe, shard })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(b: u8) -> OwnerKey {
        OwnerKey::from_bytes([b; 32])
    }

    #[test]
    fn sealed_shards_open_only_in_their_place_with_their_key() {
        let c = FileCipher::new(&owner(1), "file-a");
        let salt = [9u8; 16];
        let plain: Vec<u8> = (0..4096).map(|i| (i % 251) as u8).collect();
        let mut bytes = plain.clone();
        let tag = c.seal(&salt, 3, 1, &mut bytes);
        assert_ne!(bytes, plain, "sealing left the bytes readable");

        let mut back = bytes.clone();
        c.open(&salt, 3, 1, &mut back, &tag).unwrap();
        assert_eq!(back, plain);

        // Same plaintext, same place: the same ciphertext (healing reveals nothing).
        let mut again = plain.clone();
        assert_eq!(c.seal(&salt, 3, 1, &mut again), tag);
        assert_eq!(again, bytes);

        let refused = |cipher: &FileCipher, salt: &Salt, j: u64, i: usize, b: &[u8]| {
            let mut b = b.to_vec();
            cipher.open(salt, j, i, &mut b, &tag).is_err()
        };
        assert!(refused(&c, &salt, 4, 1, &bytes), "another stripe");
        assert!(refused(&c, &salt, 3, 2, &bytes), "another shard");
        assert!(refused(&c, &[8; 16], 3, 1, &bytes), "another salt");
        assert!(
            refused(&FileCipher::new(&owner(2), "file-a"), &salt, 3, 1, &bytes),
            "another owner"
        );
        assert!(
            refused(&FileCipher::new(&owner(1), "file-b"), &salt, 3, 1, &bytes),
            "another file"
        );
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        assert!(refused(&c, &salt, 3, 1, &flipped), "a flipped bit");
    }
}
