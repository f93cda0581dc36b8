//! What every fuzz target shares: one runtime, and scratch directories on tmpfs.

/// One runtime for every input (building one per input would dominate the run).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

/// A fresh scratch directory for one input, on tmpfs when there is one (stores sync
/// every write).
#[allow(dead_code)] // the frame target needs no directory
pub fn scratch_dir(prefix: &str) -> tempfile::TempDir {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .expect("temp dir")
}
