//! Messages of the processes and the help that name the cause and the fix (issue 17);
//! those of a mount are in `mount::messages`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::mount::{free_port, poolfs, run_ok, test_dir, wait_until, ControllerProc};

/// Runs `poolfs node` against `controller` with the key at `key` until it has logged a
/// warning (at most 15 s), and returns what it wrote to stderr.
fn node_warning(dir: &Path, controller: &str, key: &Path) -> String {
    std::fs::create_dir_all(dir).expect("node dir");
    let log = dir.join("node.log");
    let mut child = poolfs(["node", "--listen", "127.0.0.1:0", "-c", controller])
        .arg("--storage")
        .arg(dir.join("node"))
        .arg("--key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("node log"))
        .spawn()
        .expect("start poolfs node");
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(15), || read().contains(" WARN "));
    let _ = child.kill();
    let _ = child.wait();
    read()
}

/// A node that never had a pool view does not claim to serve with the last one: with a
/// key the controller refuses it says that the key is not the pool's, and with no
/// controller there that it is not a member yet.
#[test]
fn a_node_that_never_joined_says_why_rather_than_serving_a_last_pool_view() {
    let tmp = test_dir("nodemsg");
    let root = tmp.path().canonicalize().unwrap();
    let ctrl = ControllerProc::start(&root.join("controller"), &root.join("ctrl.log"));
    let wrong = root.join("wrong.key");
    run_ok(poolfs(["init", "--key"]).arg(&wrong));

    let said = node_warning(&root.join("wrong"), &ctrl.addr.to_string(), &wrong);
    assert!(
        said.contains(&format!(
            "the controller at {} refused our pool key",
            ctrl.addr
        )) && said.contains("is not the pool's")
            && said.contains("--key FILE"),
        "node with a wrong key: {said}"
    );
    assert!(!said.contains("last pool view"), "{said}");

    let nobody = format!("127.0.0.1:{}", free_port());
    let said = node_warning(
        &root.join("alone"),
        &nobody,
        crate::harness::mount::test_key(),
    );
    assert!(
        said.contains(&format!("controller {nobody} unreachable"))
            && said.contains("not a member of the pool yet")
            && said.contains("is `poolfs controller` running there?"),
        "node without a controller: {said}"
    );
    assert!(!said.contains("last pool view"), "{said}");
}

/// The help says what DATA_DIR is wherever it is used, and that `node`, `mount` and
/// `controller` listen on every interface unless told otherwise.
#[test]
fn help_says_what_data_dir_is_and_that_servers_listen_on_every_interface() {
    let help = |args: &[&str]| {
        let out = run_ok(Command::new(crate::harness::mount::BIN).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let data_dir = "DATA_DIR is where poolfs keeps its state when not told otherwise: \
                    $XDG_DATA_HOME/poolfs if XDG_DATA_HOME is set, else ~/.local/share/poolfs";
    let top = help(&["--help"]);
    assert!(top.contains(data_dir), "poolfs --help: {top}");
    assert!(
        top.contains("`node`, `mount` and `controller` listen on every interface (0.0.0.0)"),
        "poolfs --help: {top}"
    );
    for cmd in [
        "init",
        "controller",
        "node",
        "mount",
        "up",
        "down",
        "status",
        "put",
        "get",
    ] {
        let text = help(&[cmd, "--help"]);
        assert!(
            text.contains("DATA_DIR") && text.contains(data_dir),
            "poolfs {cmd} --help: {text}"
        );
    }
    for cmd in ["controller", "node", "mount"] {
        let text = help(&[cmd, "--help"]);
        assert!(
            text.contains("the default is every interface")
                && text.contains("listens on every interface of this machine (0.0.0.0)")
                && text.contains("--listen 127.0.0.1:PORT"),
            "poolfs {cmd} --help: {text}"
        );
    }
}

/// `status` on a machine where no pool was started says so and how to start one or
/// reach one elsewhere, rather than asking for a pool key (before: "no pool key ... run
/// `poolfs init`", which starts no pool) or naming a controller the user never chose.
#[test]
fn status_with_no_pool_says_how_to_start_one_or_name_its_controller() {
    let home = test_dir("statusnone");
    let status = || {
        let out = Command::new(crate::harness::mount::BIN)
            .arg("status")
            .env("HOME", home.path())
            .env_remove("XDG_DATA_HOME")
            .env_remove("POOLFS_KEY")
            .env_remove("POOLFS_CONTROLLER")
            .output()
            .expect("run poolfs status");
        assert!(!out.status.success(), "status with no pool succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let says_what_to_do = |err: &str| {
        err.contains("no pool to show")
            && err.contains("Start one with `poolfs up ~/pool`")
            && err.contains("--controller ADDR")
    };
    let err = status();
    assert!(says_what_to_do(&err), "stderr: {err}");
    assert!(err.contains("there is no pool key at"), "stderr: {err}");
    assert!(!err.contains("run `poolfs init`"), "stderr: {err}");
    // With a key but still no pool: the same advice, and that nothing answered.
    let key = home.path().join(".local/share/poolfs/pool.key");
    run_ok(poolfs(["init", "--key"]).arg(&key));
    let err = status();
    assert!(says_what_to_do(&err), "stderr: {err}");
    assert!(err.contains("127.0.0.1:2000"), "stderr: {err}");
}

/// Without `HOME` (mount(8) runs its helpers with an empty environment), the default
/// state and key are under the user's home from the password database, not under a
/// shared directory (before: /tmp/.local/share/poolfs, where anyone may plant a key).
#[test]
fn without_home_the_default_key_is_in_the_users_home_from_passwd() {
    // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
    let home = unsafe {
        let pw = libc::getpwuid(libc::getuid());
        assert!(!pw.is_null(), "this user has no passwd entry");
        std::ffi::CStr::from_ptr((*pw).pw_dir)
            .to_string_lossy()
            .into_owned()
    };
    let out = Command::new(crate::harness::mount::BIN)
        .arg("status")
        .env_clear()
        .output()
        .expect("run poolfs status");
    let err = String::from_utf8_lossy(&out.stderr);
    let want = Path::new(&home).join(".local/share/poolfs");
    assert!(
        err.contains(&want.display().to_string()),
        "stderr should name {}: {err}",
        want.display()
    );
    assert!(!err.contains("/tmp/.local"), "stderr: {err}");
}

/// A report piped into a reader that has gone (`poolfs status | head -3`) ends the
/// command quietly, as `ls | head` does, not with a panic of "failed printing to
/// stdout". The reader end is closed before the command starts, so every write fails.
#[test]
fn a_report_piped_into_a_closed_reader_ends_quietly_without_a_panic() {
    for args in [&["completions", "bash"][..], &["manpage"][..]] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let out = Command::new(crate::harness::mount::BIN)
            .args(args)
            .stdout(writer)
            .output()
            .expect("run poolfs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{args:?}: {err}");
    }
}

/// A node whose port another process holds (a mount's node and a `poolfs node` both
/// default to 2001) says so and how to pick another, and exits.
#[test]
fn a_node_whose_port_is_taken_says_to_give_it_another() {
    let tmp = test_dir("portinuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = crate::harness::mount::run(
        poolfs(["node", "--listen", &addr, "-c", &nobody])
            .arg("--storage")
            .arg(tmp.path().join("node"))
            .arg("--key")
            .arg(crate::harness::mount::test_key()),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a node on a taken port started");
    assert!(
        err.contains(&format!("cannot listen on {addr}"))
            && err.contains("another process (a node of this machine?) listens there")
            && err.contains("--listen ADDR:PORT"),
        "stderr: {err}"
    );
}
