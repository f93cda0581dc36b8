//! The recovery code through the real binary: `poolfs key export` prints the owner key
//! of a storage directory as 24 words, `poolfs key import` writes it back byte for byte
//! and refuses a mistyped code without writing anything; the first mount of a storage
//! directory tells the user, once, to keep the code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::mount::{
    can_mount, is_mounted, is_ours, poolfs, run, run_ok, test_dir, wait_until, Pool,
};

/// The first words of the first-mount notice (`poolfs::trust::new_owner_key_notice`).
const NOTICE: &str = "A new owner key was made for";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `poolfs key export --storage DIR`, which must succeed: the code it printed.
fn export(storage: &Path) -> String {
    let out = run_ok(poolfs(["key", "export", "--storage"]).arg(storage));
    let text = stdout(&out);
    // One line on stdout and nothing else, so `$(poolfs key export ...)` is the code.
    assert_eq!(text.lines().count(), 1, "stdout: {text:?}");
    assert!(text.ends_with('\n'), "stdout: {text:?}");
    text.trim_end().to_string()
}

/// `poolfs key import --storage DIR` with the code on standard input.
fn import_from_stdin(storage: &Path, code: &str) -> Output {
    let mut child = poolfs(["key", "import", "--storage"])
        .arg(storage)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start poolfs key import");
    child
        .stdin
        .take()
        .expect("stdin pipe")
        .write_all(code.as_bytes())
        .expect("write the code");
    child
        .wait_with_output()
        .expect("wait for poolfs key import")
}

/// A storage directory with an owner key made the way a mount makes it.
fn storage_with_key(root: &Path, name: &str) -> PathBuf {
    let storage = root.join(name);
    poolfs::trust::OwnerKey::load_or_create(&storage).expect("make an owner key");
    storage
}

fn owner_key_file(storage: &Path) -> PathBuf {
    storage.join(poolfs::trust::OWNER_KEY_FILE)
}

#[test]
fn an_exported_code_imported_elsewhere_gives_the_same_owner_key() {
    let dir = test_dir("code-roundtrip");
    let root = dir.path();
    let old = storage_with_key(root, "old-machine");
    let original = std::fs::read(owner_key_file(&old)).unwrap();

    let code = export(&old);
    let words: Vec<&str> = code.split(' ').collect();
    assert_eq!(words.len(), 24, "{code:?}");
    assert!(words
        .iter()
        .all(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase())));

    // From a file, as a person would type it from paper: upper case, several lines.
    let paper = root.join("paper.txt");
    let typed: String = words
        .chunks(6)
        .map(|line| format!("{}\n", line.join("  ").to_uppercase()))
        .collect();
    std::fs::write(&paper, typed).unwrap();
    let fresh = root.join("new-machine");
    let out = run_ok(
        poolfs(["key", "import", "--storage"])
            .arg(&fresh)
            .arg("--code-file")
            .arg(&paper),
    );
    let key_file = owner_key_file(&fresh);
    assert!(
        stdout(&out).contains(&format!("wrote the owner key to {}", key_file.display())),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), original);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the owner key must be private");

    // From standard input, into a third directory.
    let piped = root.join("piped");
    let out = import_from_stdin(&piped, &format!("{code}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(owner_key_file(&piped)).unwrap(), original);

    // Importing the same code again changes nothing and says so.
    let out = import_from_stdin(&fresh, &code);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("already holds this owner key"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read(&key_file).unwrap(), original);
}

#[test]
fn a_mistyped_recovery_code_is_refused_and_nothing_is_written() {
    let dir = test_dir("code-typo");
    let root = dir.path();
    let code = export(&storage_with_key(root, "old"));
    let words: Vec<&str> = code.split(' ').collect();
    let target = root.join("new");

    // Each mistake, and the words a person needs to find it.
    let mut unknown = words.clone();
    unknown[4] = "zebrx";
    let mut swapped = words.clone();
    let other = (1..24)
        .find(|&i| words[i] != words[0])
        .expect("two distinct words");
    swapped.swap(0, other);
    let cases = [
        (
            words[..23].join(" "),
            "expected 24 words, got 23".to_string(),
        ),
        (unknown.join(" "), "word 5 (\"zebrx\")".to_string()),
        (
            swapped.join(" "),
            "a word is mistyped or out of order".to_string(),
        ),
    ];
    for (typed, expected) in cases {
        let out = import_from_stdin(&target, &typed);
        assert!(!out.status.success(), "accepted {typed:?}");
        let err = stderr(&out);
        assert!(err.contains(&expected), "wanted {expected:?} in: {err}");
        assert!(err.contains("not a valid recovery code"), "{err}");
        assert!(
            !target.exists(),
            "a refused code must write nothing: {}",
            target.display()
        );
    }

    // A code for another owner never replaces the key a directory holds.
    let other_owner = storage_with_key(root, "other");
    let before = std::fs::read(owner_key_file(&other_owner)).unwrap();
    let out = import_from_stdin(&other_owner, &code);
    assert!(!out.status.success(), "replaced another owner's key");
    assert!(
        stderr(&out).contains("holds a different owner key"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read(owner_key_file(&other_owner)).unwrap(), before);
}

#[test]
fn exporting_from_a_storage_no_mount_used_says_so() {
    let dir = test_dir("code-none");
    let empty = dir.path().join("never-mounted");
    let out = run(poolfs(["key", "export", "--storage"]).arg(&empty));
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "", "nothing on stdout when there is no key");
    let err = stderr(&out);
    assert!(err.contains("no mount has used"), "{err}");
    assert!(err.contains(&empty.display().to_string()), "{err}");
    assert!(!empty.exists(), "export must not make a key");
}

/// How often the notice names `storage` in `text`.
fn notices_for(text: &str, storage: &Path) -> usize {
    text.matches(&format!("{NOTICE} {}.", storage.display()))
        .count()
}

/// `fusermount3 -u MNT`, then waits for the mount process `pid` to exit.
fn unmount_and_wait(mnt: &Path, pid: u32, root: &Path) {
    run_ok(Command::new("fusermount3").arg("-u").arg(mnt));
    assert!(
        wait_until(Duration::from_secs(10), || !is_ours(pid, root)),
        "mount process {pid} did not exit after the unmount"
    );
}

#[test]
#[cfg_attr(
    poolfs_no_mount,
    ignore = "needs root, /dev/fuse read-write and fusermount3"
)]
fn the_first_mount_of_a_storage_tells_the_user_once_to_keep_the_code() {
    if !can_mount() {
        return;
    }
    // `up`: its mount makes the owner key, `up` tells the user.
    let mut pool = Pool::up("keynotice", 1);
    let first = pool.mount_storage.clone();
    assert_eq!(
        notices_for(&pool.up_stderr, &first),
        1,
        "poolfs up: {}",
        pool.up_stderr
    );
    assert!(
        pool.up_stderr
            .contains(&format!("poolfs key export --storage {}", first.display())),
        "{}",
        pool.up_stderr
    );
    // The key that mount made is the one exported.
    let code = export(&first);
    let key = poolfs::trust::OwnerKey::load(&first).unwrap();
    assert_eq!(
        poolfs::trust::OwnerKey::from_recovery_code(&code).unwrap(),
        key
    );

    // The second mount of that storage (`poolfs mount`, detached) says nothing.
    pool.unmount();
    let again = pool.remount_with(&[]);
    assert!(!stderr(&again).contains(NOTICE), "{}", stderr(&again));
    assert_eq!(poolfs::trust::OwnerKey::load(&first).unwrap(), key);

    // `poolfs mount` on a storage directory of its own: told once.
    let (mnt, root) = (pool.mnt.clone(), pool.root.clone());
    unmount_and_wait(&mnt, pool.mount_pid, &root);
    pool.mount_storage = root.join("second-storage");
    let second = pool.mount_storage.clone();
    let out = pool.remount_with(&[]);
    assert_eq!(notices_for(&stderr(&out), &second), 1, "{}", stderr(&out));
    unmount_and_wait(&mnt, pool.mount_pid, &root);

    // `poolfs mount -f` tells it on its own terminal, once the mount is up.
    let third = root.join("third-storage");
    let log = root.join("foreground.stderr");
    let child = poolfs(["mount"])
        .arg(&mnt)
        .arg("--storage")
        .arg(&third)
        .args(["-c", &pool.controller.to_string()])
        .args(["--listen", "127.0.0.1:0", "-f"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("foreground log"))
        .spawn()
        .expect("start poolfs mount -f");
    let pid = child.id();
    pool.adopt(child);
    assert!(
        wait_until(Duration::from_secs(30), || is_mounted(&mnt)
            && std::fs::read_to_string(&log).is_ok_and(|t| t.contains(NOTICE))),
        "no mount, or no notice: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    unmount_and_wait(&mnt, pid, &root);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(notices_for(&text, &third), 1, "{text}");
}
