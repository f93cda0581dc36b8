//! Allocated space of segment files: a node counts the bytes its disk really holds for
//! a segment (`st_blocks * 512`), not its apparent length, and finds which bytes of a
//! range are not allocated yet before it allocates them (`fallocate`).
//!
//! Which bytes are allocated comes from FIEMAP where the filesystem has it (ext4, XFS,
//! btrfs): it reports preallocated extents, and blocks past the end of the file, which
//! `lseek(SEEK_DATA)` shows as holes. Filesystems without it (tmpfs) are walked with
//! `SEEK_DATA`/`SEEK_HOLE`, which overestimates a range that was reserved but not yet
//! written; one without those either counts everything up to its length as data.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes a file takes on its disk (its allocated blocks, whatever its length).
pub fn allocated(meta: &Metadata) -> u64 {
    meta.blocks().saturating_mul(512)
}

/// `fallocate(2)` of `len` bytes at `offset` with `mode` (`libc::FALLOC_FL_*`),
/// retried when interrupted. `len` must not be 0 (the kernel refuses it).
pub fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let too_large = || io::Error::new(io::ErrorKind::InvalidInput, "range too large");
    let off = libc::off_t::try_from(offset).map_err(|_| too_large())?;
    let n = libc::off_t::try_from(len).map_err(|_| too_large())?;
    loop {
        // SAFETY: a valid descriptor we hold; the call takes no pointers.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, off, n) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Does this error say the filesystem cannot do the operation at all (rather than that
/// it failed this time)?
pub fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS)
    )
}

/// Finds the bytes of a range of a segment file that are not allocated yet. Remembers
/// whether the store's filesystem answers FIEMAP, so a filesystem without it costs one
/// failed call per store, not one per STORE.
pub struct ExtentMap {
    /// Allocation unit assumed for a file that does not exist yet, in bytes.
    block: u64,
    no_fiemap: AtomicBool,
}

impl ExtentMap {
    /// A map for files allocated in units of `block` bytes (the filesystem's block size).
    pub fn new(block: u64) -> Self {
        ExtentMap {
            block: block.max(512),
            no_fiemap: AtomicBool::new(false),
        }
    }

    /// Bytes that allocating `offset..end` of a file that does not exist yet takes: the
    /// range rounded out to whole blocks.
    pub fn span(&self, offset: u64, end: u64) -> u64 {
        span(self.block, offset, end)
    }

    /// Bytes of `offset..end` of `file` (rounded out to whole blocks) that are not
    /// allocated: what allocating the range would add to the file's blocks.
    pub fn unallocated(&self, file: &File, offset: u64, end: u64) -> io::Result<u64> {
        let meta = file.metadata()?;
        let block = meta.blksize().max(512);
        let (start, stop) = (offset / block * block, end.div_ceil(block) * block);
        if stop <= start {
            return Ok(0);
        }
        if !self.no_fiemap.load(Ordering::Relaxed) {
            match fiemap_allocated(file, start, stop) {
                Ok(held) => return Ok((stop - start).saturating_sub(held)),
                Err(e) if unsupported(&e) => {
                    log::info!(
                        "the segment store's filesystem has no FIEMAP ({e}): free space is \
                         found with SEEK_DATA/SEEK_HOLE, which counts reserved but unwritten \
                         ranges as free"
                    );
                    self.no_fiemap.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let held = seek_allocated(file, meta.len(), block, start, stop)?;
        Ok((stop - start).saturating_sub(held))
    }
}

impl ExtentMap {
    /// Bytes allocated in the whole blocks inside `from..to` of `file`, where the
    /// filesystem reports extents (FIEMAP); `None` where it does not.
    pub fn mapped(&self, file: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
        if self.no_fiemap.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let block = file.metadata()?.blksize().max(512);
        let (start, stop) = (from.div_ceil(block) * block, to / block * block);
        if stop <= start {
            return Ok(Some(0));
        }
        match fiemap_allocated(file, start, stop) {
            Ok(held) => Ok(Some(held)),
            Err(e) if unsupported(&e) => {
                self.no_fiemap.store(true, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Does the filesystem of `file` report its extents (FIEMAP)? Without it, a range that
/// was reserved but not written yet counts as free when a store there is checked.
#[cfg(test)]
pub fn maps_extents(file: &File) -> bool {
    fiemap_allocated(file, 0, 1).is_ok()
}

/// `offset..end` rounded out to whole blocks of `block` bytes, in bytes.
fn span(block: u64, offset: u64, end: u64) -> u64 {
    (end.div_ceil(block) * block).saturating_sub(offset / block * block)
}

/// `_IOWR('f', 11, struct fiemap)`, from linux/fs.h: the libc crate does not declare
/// FIEMAP, and the `fiemap` crate walks a file from its start on every call, where a
/// STORE needs one range of a segment that may hold thousands of extents before it.
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// `fe_flags` bit of the file's last extent.
const FIEMAP_EXTENT_LAST: u32 = 0x1;
/// Extents asked for per call; a STORE's range usually has one or two.
const EXTENTS_PER_CALL: usize = 32;

/// `struct fiemap_extent` of linux/fiemap.h.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

/// `struct fiemap` of linux/fiemap.h, with room for `EXTENTS_PER_CALL` extents.
#[repr(C)]
struct Fiemap {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
    fm_extents: [FiemapExtent; EXTENTS_PER_CALL],
}

/// Bytes of `start..stop` covered by the file's extents (written, preallocated or
/// delayed), past its end too.
fn fiemap_allocated(file: &File, start: u64, stop: u64) -> io::Result<u64> {
    let mut pos = start;
    let mut held = 0;
    while pos < stop {
        let mut map = Fiemap {
            fm_start: pos,
            fm_length: stop - pos,
            fm_flags: 0,
            fm_mapped_extents: 0,
            fm_extent_count: EXTENTS_PER_CALL as u32,
            fm_reserved: 0,
            fm_extents: [FiemapExtent::default(); EXTENTS_PER_CALL],
        };
        // SAFETY: `map` is a `struct fiemap` with room for the `fm_extent_count`
        // extents the kernel may write, and outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP as _, &mut map) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let found = (map.fm_mapped_extents as usize).min(EXTENTS_PER_CALL);
        let mut next = pos;
        let mut last = false;
        for e in &map.fm_extents[..found] {
            let end = e.fe_logical.saturating_add(e.fe_length);
            held += end.min(stop).saturating_sub(e.fe_logical.max(pos));
            next = next.max(end);
            last |= e.fe_flags & FIEMAP_EXTENT_LAST != 0;
        }
        // Fewer than asked for: the range has no more.
        if last || found < EXTENTS_PER_CALL || next <= pos {
            break;
        }
        pos = next;
    }
    Ok(held)
}

/// Bytes of `start..stop` (block-aligned) that `SEEK_DATA`/`SEEK_HOLE` report as data,
/// rounded out to whole blocks; nothing past the file's `size`. A filesystem that
/// cannot tell reports everything up to its length as data.
fn seek_allocated(file: &File, size: u64, block: u64, start: u64, stop: u64) -> io::Result<u64> {
    let limit = stop.min(size.div_ceil(block) * block);
    let seek = |pos: u64, whence: libc::c_int| -> io::Result<u64> {
        let at = libc::off_t::try_from(pos).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: a valid descriptor we hold. It moves the descriptor's file position,
        // which nothing uses: segment files are read and written at explicit offsets.
        let r = unsafe { libc::lseek(file.as_raw_fd(), at, whence) };
        u64::try_from(r).map_err(|_| io::Error::last_os_error())
    };
    let mut pos = start;
    let mut held = 0;
    while pos < limit {
        let data = match seek(pos, libc::SEEK_DATA) {
            Ok(at) => (at / block * block).max(pos),
            // No data from `pos` to the end.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return Ok(held + (limit - pos));
            }
            Err(e) => return Err(e),
        };
        if data >= limit {
            break;
        }
        let hole = match seek(data, libc::SEEK_HOLE) {
            Ok(at) => (at.div_ceil(block) * block).min(limit),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => limit,
            Err(e) => return Err(e),
        };
        if hole <= data {
            break;
        }
        held += hole - data;
        pos = hole;
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn file(dir: &tempfile::TempDir) -> File {
        File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("f"))
            .unwrap()
    }

    #[test]
    fn holes_written_and_reserved_ranges_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(&dir);
        let b = f.metadata().unwrap().blksize();
        let map = ExtentMap::new(b);
        assert_eq!(map.unallocated(&f, 0, 10 * b).unwrap(), 10 * b);
        // A byte written mid-file allocates its block only.
        f.write_all_at(b"x", 5 * b + 3).unwrap();
        assert_eq!(map.unallocated(&f, 0, 10 * b).unwrap(), 9 * b);
        assert_eq!(map.unallocated(&f, 5 * b, 5 * b + 1).unwrap(), 0);
        // Part of a block counts as the whole block.
        assert_eq!(map.unallocated(&f, 6 * b + 1, 6 * b + 2).unwrap(), b);
        // Reserved past the end (the length stays): allocated, where FIEMAP can tell.
        fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 20 * b, 2 * b).unwrap();
        assert_eq!(allocated(&f.metadata().unwrap()), 3 * b);
        let reserved = map.unallocated(&f, 20 * b, 22 * b).unwrap();
        if maps_extents(&f) {
            assert_eq!(reserved, 0);
        } else {
            assert_eq!(reserved, 2 * b, "counted as free without FIEMAP");
        }
        // The SEEK walk sees the written block, and nothing past the length.
        assert_eq!(seek_allocated(&f, 5 * b + 4, b, 0, 30 * b).unwrap(), b);
        assert_eq!(span(b, 1, 2), b);
        assert_eq!(span(b, b - 1, b + 1), 2 * b);
        assert_eq!(span(b, 0, 0), 0);
    }
}
