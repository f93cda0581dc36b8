//! The C allocator's settings for long-running processes: few malloc arenas, and
//! freed memory handed back to the system now and then. glibc keeps memory a process
//! freed (a namespace snapshot's part, a burst of requests) in its arenas, up to 8 per
//! core, and gives back little of it: a mount that had created 20 000 files held
//! 188 MiB of RSS in 16 arenas, 131 MiB after one `malloc_trim`; with 2 arenas, 149
//! MiB at 50 000 files against 224 MiB (bench/RESULTS.md). Both calls are glibc's;
//! elsewhere they do nothing.

/// Most malloc arenas a process uses (glibc's default is 8 per core). Two serve two
/// cores: the threads that allocate most (the FUSE workers, the runtime's) spend their
/// time in system calls, not in malloc.
pub const ARENAS: i32 = 2;

/// How often a mount hands freed memory back (`trim`): it walks every arena under its
/// lock, a few milliseconds for a heap of 100 MiB.
pub const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Limits the process to `ARENAS` malloc arenas. Call before any thread starts: an
/// arena made before the call stays.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator; any value is accepted
    // or refused with 0, which leaves the default in place (nothing to handle).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Hands the free memory of every arena back to the system (`malloc_trim(0)`).
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it returns whether it released any.
    unsafe {
        libc::malloc_trim(0);
    }
}
