//! Shard encryption: every shard is sealed with AES-256-GCM (ring, using the CPU's AES
//! instructions) so the nodes holding it learn only sizes.
//!
//! Keys: a file key is derived with BLAKE3's KDF from the owner's secret and the file
//! id; each write of a stripe draws a fresh random 128-bit salt (kept in the manifest)
//! and seals its shards under a key derived from the file key and that salt. A shard is
//! sealed in chunks of `SEAL_CHUNK` bytes, chunk c of shard i with nonce (i, c), and the
//! chunks' tags follow the ciphertext (`layout::sealed_len`), so a reader can fetch and
//! authenticate one chunk without the rest of the shard. A (key, nonce) pair never seals
//! two different plaintexts: a rewrite gets a new salt, hence a new key. Rebuilding a
//! shard (healing, repair) re-seals the same plaintext under the same key and nonces,
//! which yields the same ciphertext and reveals nothing new. The file id and the
//! stripe, shard and chunk numbers are the associated data, so a chunk moved to another
//! place fails to open; the reader knows every shard's length from the manifest, so a
//! shard cut short or grown fails too.

use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_256_GCM, NONCE_LEN};

use super::layout::{sealed_len, SEAL_CHUNK, TAG_LEN};
use crate::trust::OwnerKey;

/// The per-stripe-write random input of the shard keys.
pub type Salt = [u8; 16];

/// BLAKE3 key-derivation contexts: a file key and a stripe key are never any other key.
const FILE_KEY_CONTEXT: &str = "poolfs 2026-11 shard key for one file, v1";
const STRIPE_KEY_CONTEXT: &str = "poolfs 2026-11 shard key for one stripe write, v3 chunked";

/// A shard could not be opened: it was not sealed by this owner for this place.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard} of stripe {stripe} fails authentication (tampered, or not ours)")]
pub struct OpenError {
    /// The stripe the shard belongs to.
    pub stripe: u64,
    /// The shard's index in its stripe.
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

    fn nonce(shard: usize, chunk: usize) -> Nonce {
        let mut n = [0u8; NONCE_LEN];
        n[..4].copy_from_slice(&(shard as u32).to_le_bytes());
        n[4..8].copy_from_slice(&(chunk as u32).to_le_bytes());
        Nonce::assume_unique_for_key(n)
    }

    fn aad(&self, stripe: u64, shard: usize, chunk: usize) -> Aad<Vec<u8>> {
        let mut aad = Vec::with_capacity(self.file_id.len() + 16);
        aad.extend_from_slice(&self.file_id);
        aad.extend_from_slice(&stripe.to_le_bytes());
        aad.extend_from_slice(&(shard as u32).to_le_bytes());
        aad.extend_from_slice(&(chunk as u32).to_le_bytes());
        Aad::from(aad)
    }

    /// Seals every shard of stripe `stripe` (shard i is `shards[i]`) in place, with the
    /// stripe key derived once, and appends each shard's chunk tags to it.
    pub fn seal_all(&self, salt: &Salt, stripe: u64, shards: &mut [Vec<u8>]) {
        let key = self.stripe_key(salt);
        for (i, bytes) in shards.iter_mut().enumerate() {
            let len = bytes.len();
            let mut tags = Vec::with_capacity(sealed_len(len) - len);
            for (c, chunk) in bytes.chunks_mut(SEAL_CHUNK).enumerate() {
                let tag = key.seal_in_place_separate_tag(
                    Self::nonce(i, c),
                    self.aad(stripe, i, c),
                    chunk,
                );
                // Sealing fails only past GCM's 64 GiB message limit; chunks are 32 KiB.
                match tag {
                    Ok(tag) => tags.extend_from_slice(tag.as_ref()),
                    Err(_) => tags.extend_from_slice(&[0; TAG_LEN]),
                }
            }
            bytes.extend_from_slice(&tags);
        }
    }

    /// Opens a whole sealed shard of `plain_len` bytes in place, leaving the plaintext,
    /// or refuses it unless every chunk is intact.
    ///
    /// Errors: `OpenError` if `bytes` is not `sealed_len(plain_len)` long or any chunk
    /// fails AES-GCM authentication (`bytes` must then not be used).
    pub fn open_shard(
        &self,
        salt: &Salt,
        stripe: u64,
        shard: usize,
        plain_len: usize,
        bytes: &mut Vec<u8>,
    ) -> Result<(), OpenError> {
        if bytes.len() != sealed_len(plain_len) {
            return Err(OpenError { stripe, shard });
        }
        let (ciphertext, tags) = bytes.split_at_mut(plain_len);
        self.open_chunks(salt, stripe, shard, 0, ciphertext, tags)?;
        bytes.truncate(plain_len);
        Ok(())
    }

    /// Opens, in place, consecutive chunks of a sealed shard starting at chunk `first`:
    /// `ciphertext` is their bytes (every chunk whole but the shard's last) and `tags`
    /// their tags, in order.
    ///
    /// Errors: `OpenError` if the tags do not match the chunk count or a chunk fails
    /// authentication.
    pub fn open_chunks(
        &self,
        salt: &Salt,
        stripe: u64,
        shard: usize,
        first: usize,
        ciphertext: &mut [u8],
        tags: &[u8],
    ) -> Result<(), OpenError> {
        let refused = || OpenError { stripe, shard };
        if tags.len() != TAG_LEN * ciphertext.len().div_ceil(SEAL_CHUNK) {
            return Err(refused());
        }
        let key = self.stripe_key(salt);
        for ((c, chunk), tag) in ciphertext
            .chunks_mut(SEAL_CHUNK)
            .enumerate()
            .zip(tags.chunks_exact(TAG_LEN))
        {
            let mut t = [0u8; TAG_LEN];
            t.copy_from_slice(tag);
            let c = first + c;
            key.open_in_place_separate_tag(
                Self::nonce(shard, c),
                self.aad(stripe, shard, c),
                Tag::from(t),
                chunk,
                0..,
            )
            .map_err(|_| refused())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(b: u8) -> OwnerKey {
        OwnerKey::from_bytes([b; 32])
    }

    fn plain(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Shard 1 of stripe 3, sealed (shard 0 is sealed alongside and set aside).
    fn sealed_shard_1(c: &FileCipher, salt: &Salt, len: usize) -> Vec<u8> {
        let mut shards = vec![plain(len), plain(len)];
        c.seal_all(salt, 3, &mut shards);
        shards.swap_remove(1)
    }

    #[test]
    fn sealed_shards_open_only_in_their_place_with_their_key() {
        let c = FileCipher::new(&owner(1), "file-a");
        let salt = [9u8; 16];
        let len = 4096;
        let bytes = sealed_shard_1(&c, &salt, len);
        assert_eq!(bytes.len(), sealed_len(len));
        assert_ne!(
            &bytes[..len],
            &plain(len)[..],
            "sealing left the bytes readable"
        );

        let mut back = bytes.clone();
        c.open_shard(&salt, 3, 1, len, &mut back).unwrap();
        assert_eq!(back, plain(len));

        // Same plaintext, same place: the same ciphertext (healing reveals nothing).
        assert_eq!(sealed_shard_1(&c, &salt, len), bytes);

        let refused = |cipher: &FileCipher, salt: &Salt, j: u64, i: usize, b: &[u8]| {
            let mut b = b.to_vec();
            cipher.open_shard(salt, j, i, len, &mut b).is_err()
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
        let mut flipped_tag = bytes.clone();
        flipped_tag[len + 3] ^= 1;
        assert!(refused(&c, &salt, 3, 1, &flipped_tag), "a flipped tag bit");
        assert!(
            refused(&c, &salt, 3, 1, &bytes[..bytes.len() - 1]),
            "cut short"
        );
    }

    #[test]
    fn any_chunk_opens_alone_but_only_in_its_own_position() {
        let c = FileCipher::new(&owner(1), "file-a");
        let salt = [7u8; 16];
        // Three whole chunks and a short last one.
        let len = 3 * SEAL_CHUNK + 1000;
        let bytes = sealed_shard_1(&c, &salt, len);
        let tag = |ch: usize| &bytes[len + ch * TAG_LEN..len + (ch + 1) * TAG_LEN];
        let chunk = |ch: usize| bytes[ch * SEAL_CHUNK..((ch + 1) * SEAL_CHUNK).min(len)].to_vec();

        // Chunk 2 alone, then chunks 2 and 3 together.
        let mut two = chunk(2);
        c.open_chunks(&salt, 3, 1, 2, &mut two, tag(2)).unwrap();
        assert_eq!(two, plain(len)[2 * SEAL_CHUNK..3 * SEAL_CHUNK]);
        let mut tail = bytes[2 * SEAL_CHUNK..len].to_vec();
        c.open_chunks(&salt, 3, 1, 2, &mut tail, &bytes[len + 2 * TAG_LEN..])
            .unwrap();
        assert_eq!(tail, plain(len)[2 * SEAL_CHUNK..]);

        // Chunk 1's bytes passed off as chunk 2 (with either tag), or a tag missing.
        let mut swapped = chunk(1);
        assert!(c.open_chunks(&salt, 3, 1, 2, &mut swapped, tag(2)).is_err());
        let mut swapped = chunk(1);
        assert!(c.open_chunks(&salt, 3, 1, 2, &mut swapped, tag(1)).is_err());
        let mut untagged = chunk(2);
        assert!(c.open_chunks(&salt, 3, 1, 2, &mut untagged, &[]).is_err());
    }
}
