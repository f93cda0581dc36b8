//! Shard encryption: every shard is sealed with AES-256-GCM (ring, using the CPU's AES
//! instructions) so the nodes holding it learn only sizes.
//!
//! Keys: a file key is derived with BLAKE3's KDF from the owner's secret and the file
//! id; each write of a stripe draws a fresh random 128-bit salt (kept in the manifest)
//! and seals its shards under a key derived from the file key and that salt, shard i
//! with nonce i. So a (key, nonce) pair never seals two different plaintexts: a
//! rewrite gets a new salt, hence a new key. Rebuilding a shard (healing, repair)
//! re-seals the same plaintext under the same key and nonce, which yields the same
//! ciphertext and reveals nothing new. The file id and the stripe and shard numbers
//! are the associated data, so a shard moved to another place fails to open.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};

use crate::trust::OwnerKey;

/// A GCM tag: proves a shard's bytes are those its owner sealed.
pub type SealTag = [u8; 16];
/// The per-stripe-write random input of the shard keys.
pub type Salt = [u8; 16];

/// BLAKE3 key-derivation contexts: a file key and a stripe key are never any other key.
const FILE_KEY_CONTEXT: &str = "poolfs 2026-11 shard key for one file, v1";
const STRIPE_KEY_CONTEXT: &str = "poolfs 2026-11 shard key for one stripe write, v2";

/// A shard could not be opened: it was not sealed by this owner for this place.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard} of stripe {stripe} fails authentication (tampered, or not ours)")]
pub struct OpenError {
    pub stripe: u64,
    pub shard: usize,
}

/// The cipher for the shards of one file.
pub struct FileCipher {
    file_key: [u8; 32],
    file_id: Vec<u8>,
}

impl FileCipher {
    /// The cipher for `file_id`, keyed from the owner's secret.
    pub fn new(owner: &OwnerKey, file_id: &str) -> Self {
        let mut material = Vec::with_capacity(32 + file_id.len());
        material.extend_from_slice(owner.bytes());
        material.extend_from_slice(file_id.as_bytes());
        FileCipher {
            file_key: blake3::derive_key(FILE_KEY_CONTEXT, &material),
            file_id: file_id.as_bytes().to_vec(),
        }
    }

    fn stripe_key(&self, salt: &Salt) -> LessSafeKey {
        let mut material = [0u8; 48];
        material[..32].copy_from_slice(&self.file_key);
        material[32..].copy_from_slice(salt);
        let key = blake3::derive_key(STRIPE_KEY_CONTEXT, &material);
        // A 32-byte key is always a valid AES-256 key.
        let unbound = UnboundKey::new(&AES_256_GCM, &key).unwrap_or_else(|_| unreachable!());
        LessSafeKey::new(unbound)
    }

    fn nonce(shard: usize) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&(shard as u32).to_le_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn aad(&self, stripe: u64, shard: usize) -> Aad<Vec<u8>> {
        let mut aad = Vec::with_capacity(self.file_id.len() + 12);
        aad.extend_from_slice(&self.file_id);
        aad.extend_from_slice(&stripe.to_le_bytes());
        aad.extend_from_slice(&(shard as u32).to_le_bytes());
        Aad::from(aad)
    }

    /// Encrypts every shard of stripe `stripe` in place (shard i is `shards[i]`), with
    /// the stripe key derived once; returns their tags.
    pub fn seal_all(&self, salt: &Salt, stripe: u64, shards: &mut [Vec<u8>]) -> Vec<SealTag> {
        let key = self.stripe_key(salt);
        shards
            .iter_mut()
            .enumerate()
            .map(|(i, bytes)| self.seal_with(&key, stripe, i, bytes))
            .collect()
    }

    fn seal_with(&self, key: &LessSafeKey, stripe: u64, shard: usize, bytes: &mut [u8]) -> SealTag {
        let tag =
            key.seal_in_place_separate_tag(Self::nonce(shard), self.aad(stripe, shard), bytes);
        // Sealing fails only past GCM's 64 GiB message limit; shards are a few MiB.
        let mut out = [0u8; 16];
        if let Ok(tag) = tag {
            out.copy_from_slice(tag.as_ref());
        }
        out
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
        self.stripe_key(salt)
            .open_in_place_separate_tag(
                Self::nonce(shard),
                self.aad(stripe, shard),
                Tag::from(*tag),
                bytes,
                0..,
            )
            .map(|_| ())
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
        // Shard 1 of stripe 3 (shard 0 is sealed alongside and set aside).
        let seal_shard_1 = || {
            let mut shards = vec![plain.clone(), plain.clone()];
            let tags = c.seal_all(&salt, 3, &mut shards);
            (tags[1], shards.swap_remove(1))
        };
        let (tag, bytes) = seal_shard_1();
        assert_ne!(bytes, plain, "sealing left the bytes readable");

        let mut back = bytes.clone();
        c.open(&salt, 3, 1, &mut back, &tag).unwrap();
        assert_eq!(back, plain);

        // Same plaintext, same place: the same ciphertext (healing reveals nothing).
        assert_eq!(seal_shard_1(), (tag, bytes.clone()));

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
