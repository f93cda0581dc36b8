//! How a node names the machine it runs on, for placement to tell machines apart (two
//! nodes on one machine share its fate: a reboot or a dead disk takes both).

use std::path::Path;

/// Where systemd (and dbus) keep the machine's unique id, fixed at install.
const MACHINE_ID: &str = "/etc/machine-id";

/// The default machine name of this host: its host name (uname's nodename), a dash and
/// the first 8 hex digits of BLAKE3 of /etc/machine-id, so that two machines called
/// "ubuntu" differ while the machine id itself is not published; the host name alone
/// without /etc/machine-id (or when it is empty); "unknown" without a host name.
pub fn default_machine_name() -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy().into_owned();
    name_from(&host, Path::new(MACHINE_ID))
}

/// The machine name of host `host` whose machine id is in the file `id_file`.
fn name_from(host: &str, id_file: &Path) -> String {
    let host = match host.trim() {
        "" => "unknown",
        h => h,
    };
    match std::fs::read_to_string(id_file) {
        Ok(id) if !id.trim().is_empty() => {
            let hash = blake3::hash(id.trim().as_bytes()).to_hex();
            format!("{host}-{}", &hash.as_str()[..8])
        }
        _ => host.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hosts_of_one_name_differ_by_their_machine_ids_which_stay_private() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "0123456789abcdef0123456789abcdef\n").expect("write");
        std::fs::write(&b, "fedcba9876543210fedcba9876543210\n").expect("write");
        let (name_a, name_b) = (name_from("ubuntu", &a), name_from("ubuntu", &b));
        assert_ne!(name_a, name_b);
        assert!(name_a.starts_with("ubuntu-") && name_a.len() == "ubuntu-".len() + 8);
        assert!(
            !name_a.contains("01234567"),
            "the machine id is not published"
        );
        assert_eq!(name_a, name_from("ubuntu", &a), "stable");
        // No machine id (or an empty one): the host name alone.
        assert_eq!(name_from("ubuntu", &dir.path().join("none")), "ubuntu");
        std::fs::write(&b, "\n").expect("write");
        assert_eq!(name_from("ubuntu", &b), "ubuntu");
        assert_eq!(name_from("", &b), "unknown");
    }

    #[test]
    fn this_host_has_a_machine_name() {
        assert!(!default_machine_name().is_empty());
    }
}
