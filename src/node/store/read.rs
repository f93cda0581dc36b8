//! FWD: reading byte ranges of a segment, whole or a few small parts, never short.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::super::handles::SegKey;
use crate::proto::{Identity, SegmentRef};

use super::error::{checked_end, io_err};
use super::{SegmentStore, StoreError};

/// Appends `len` bytes read at `offset` of `file` to `buf`, without zeroing them first
/// (for a whole shard that memset was a few percent of a cold `cat`).
fn pread_append(file: &File, buf: &mut Vec<u8>, len: usize, offset: u64) -> io::Result<()> {
    buf.reserve(len);
    let mut done = 0;
    while done < len {
        let at = offset + done as u64;
        let pos = libc::off_t::try_from(at).map_err(|_| io::Error::other("offset too large"))?;
        let spare = buf.spare_capacity_mut();
        // SAFETY: the kernel writes at most `len - done` bytes, and at least that many
        // are spare (reserved above, `done` of them filled since).
        let n =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), len - done, pos) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: the kernel initialized these `n` bytes just past the old length.
        unsafe { buf.set_len(buf.len() + n as usize) };
        done += n as usize;
    }
    Ok(())
}

impl SegmentStore {
    /// Reads `len` bytes at `offset` of `owner`'s segment; a range past its end is an
    /// error (`OutOfRange`), never a short answer, and one ending past `MAX_SEGMENT_END`
    /// (or overflowing) is `BadRange`. Another owner's segment is not found
    /// (`NotFound`), like one that does not exist.
    pub fn fwd(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        offset: u64,
        len: u32,
    ) -> Result<Vec<u8>, StoreError> {
        self.read_ranges(owner, seg, &[(offset, len)], false)
    }

    /// `fwd` of several `(offset, len)` ranges of one segment, opened once: their bytes
    /// one after the other. These are small reads (a chunk and its tag) where the first
    /// byte is awaited, so the disk reads no more than asked: no readahead.
    pub fn fwd_parts(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        parts: &[(u64, u32)],
    ) -> Result<Vec<u8>, StoreError> {
        self.read_ranges(owner, seg, parts, true)
    }

    pub(super) fn read_ranges(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        parts: &[(u64, u32)],
        no_readahead: bool,
    ) -> Result<Vec<u8>, StoreError> {
        let path = self.path_of(owner, seg)?;
        let name = format!("{}/{}", seg.file, seg.index);
        let file = match self.open_for_read(owner, seg, &path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(name))
            }
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        if no_readahead {
            // SAFETY: a valid descriptor we own; the call only sets a hint on it.
            let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        }
        let size = file.metadata().map_err(io_err("stat segment"))?.len();
        let mut total = 0usize;
        for &(offset, len) in parts {
            // A range no segment can hold (its end overflows, or lies past
            // `MAX_SEGMENT_END`) is a bad request, as for the other verbs; one merely
            // past this segment's end is out of range.
            if checked_end(seg, offset, u64::from(len))? > size {
                return Err(StoreError::OutOfRange {
                    segment: name,
                    offset,
                    len,
                    size,
                });
            }
            total += len as usize;
        }
        if no_readahead {
            // The disk reads the later parts (a chunk's tag, 1 MiB past it) while the
            // first is read, rather than one cold read after the other.
            for &(offset, len) in parts.iter().skip(1) {
                let Ok(at) = libc::off_t::try_from(offset) else {
                    continue;
                };
                let len = libc::off_t::from(len);
                // SAFETY: a valid descriptor we own; the call only starts reads into the
                // page cache.
                let _ = unsafe {
                    libc::posix_fadvise(file.as_raw_fd(), at, len, libc::POSIX_FADV_WILLNEED)
                };
            }
        }
        let mut buf = Vec::with_capacity(total);
        for &(offset, len) in parts {
            pread_append(&file, &mut buf, len as usize, offset)
                .map_err(io_err(format!("read {}", path.display())))?;
        }
        Ok(buf)
    }

    /// A read-only open file of `owner`'s segment, its own (so its own readahead: readers
    /// sharing one open file share its readahead state, and concurrent stripe reads at
    /// scattered offsets then defeat it; cold `cat` measured ~30% slower that way).
    /// When a STORE left the segment open, the new open goes through that handle's
    /// `/proc/self/fd` entry, which reaches the file without walking its directories:
    /// after the page cache is dropped that walk costs more than a first read itself.
    pub(super) fn open_for_read(
        &self,
        owner: &Identity,
        seg: &SegmentRef,
        path: &Path,
    ) -> io::Result<File> {
        let cached = self.handles_lock().get(&SegKey::new(owner, seg));
        if let Some(handle) = cached {
            // `handle` keeps its descriptor open (so its number cannot be reused) until
            // this open is done.
            let proc = format!("/proc/self/fd/{}", handle.file().as_raw_fd());
            if let Ok(file) = File::open(proc) {
                return Ok(file);
            }
        }
        File::open(path)
    }
}
