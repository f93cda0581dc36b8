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
