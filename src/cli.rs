//! Command-line grammar of the `poolfs` binary.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use poolfs::client::placement::Redundancy;
use poolfs::controller::ScanTarget;
use poolfs::util::parse_size;

/// Default controller port, as in the report.
pub const CONTROLLER_PORT: u16 = 2000;
/// Default node port, as in the report.
pub const NODE_PORT: u16 = 2001;

/// What DATA_DIR, used in the defaults of many options, stands for: shown after the
/// help of every command that uses it.
const DATA_DIR_HELP: &str = "DATA_DIR is where poolfs keeps its state when not told \
    otherwise: $XDG_DATA_HOME/poolfs if XDG_DATA_HOME is set, else ~/.local/share/poolfs.";

/// Said after the help of the commands that listen on the network by default.
const LISTEN_HELP: &str = "By default this listens on every interface of this machine \
    (0.0.0.0), so that the pool's other machines reach it; only holders of the pool key \
    get past the handshake. Give --listen 127.0.0.1:PORT to keep it to this machine, or an \
    address of one interface to keep it to that network.";

#[derive(Parser, Debug)]
#[command(
    name = "poolfs",
    version,
    about = "A storage pool for the machines of one LAN, mounted as a filesystem",
    long_about = "poolfs pools the disks of the machines on one LAN. Every member runs a node; one \
                  machine also runs the controller. Files are cut into stripes of k data and m \
                  parity shards on k + m machines (one segment per node on pools of up to 5, \
                  4+2 on 6, 4+3 on 7, 4+4 from 8), and read back from any k of them.",
    after_help = format!("{DATA_DIR_HELP}\n\n`node`, `mount` and `controller` listen on every \
                          interface (0.0.0.0) unless given --listen.")
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new pool key (the secret every member of the pool must hold).
    #[command(after_help = DATA_DIR_HELP)]
    Init(InitArgs),
    /// Run the controller: membership, ids, liveness (no file bytes pass through it).
    /// Listens on every interface by default.
    #[command(after_help = format!("{LISTEN_HELP}\n\n{DATA_DIR_HELP}"))]
    Controller(ControllerArgs),
    /// Run a storage node that contributes disk space to the pool. Listens on every
    /// interface by default.
    #[command(after_help = format!("{LISTEN_HELP}\n\n{DATA_DIR_HELP}"))]
    Node(NodeArgs),
    /// Show the pool's members (id, address, state, usage, last heartbeat), and the health
    /// of every file of the local mounts with their repair progress.
    #[command(after_help = DATA_DIR_HELP)]
    Status(StatusArgs),
    /// Offload a local file into the pool (without a mount).
    #[command(after_help = DATA_DIR_HELP)]
    Put(PutArgs),
    /// Fetch a file offloaded with `put` back into a local file.
    #[command(after_help = DATA_DIR_HELP)]
    Get(GetArgs),
    /// Mount the pool: this machine joins as a node and files copied in are offloaded.
    /// Its node listens on every interface by default.
    #[command(after_help = format!("{LISTEN_HELP}\n\n{DATA_DIR_HELP}"))]
    Mount(MountArgs),
    /// Start a whole pool on this machine (controller + nodes on loopback) and mount it.
    #[command(after_help = DATA_DIR_HELP)]
    Up(UpArgs),
    /// Unmount a pool started with `up` and stop its processes.
    #[command(after_help = DATA_DIR_HELP)]
    Down(DownArgs),
    /// Verify every shard of every file of a mount now, and rewrite the bad ones.
    Scrub(ScrubArgs),
    /// Ask the controller to sweep the LAN for nodes now, and show what it found.
    Scan(ScanArgs),
    /// Show the owner key of a mount as its recovery code (24 words), or restore it from
    /// one: with the code and the pool key, `mount --recover` brings the files back on
    /// another machine.
    #[command(subcommand)]
    Key(OwnerKeyCommand),
    /// Print the completion script for a shell on standard output, e.g.
    /// `poolfs completions bash > /usr/share/bash-completion/completions/poolfs`.
    Completions(CompletionsArgs),
    /// Write the man pages (poolfs.1 and one per subcommand, such as poolfs-mount.1)
    /// into a directory, or poolfs.1 alone on standard output.
    Manpage(ManpageArgs),
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManpageArgs {
    /// Directory to write every page into (made if missing) [default: print poolfs.1 on
    /// standard output].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum OwnerKeyCommand {
    /// Print the owner key of a storage directory as its recovery code: 24 words on one
    /// line, to write down and keep with the pool key.
    Export(KeyExportArgs),
    /// Check a recovery code and write its owner key (STORAGE/owner.key) into a storage
    /// directory; a different key already there is never replaced.
    Import(KeyImportArgs),
}

#[derive(Args, Debug)]
pub struct KeyExportArgs {
    /// The storage directory of the mount whose owner key to show.
    #[arg(long)]
    pub storage: PathBuf,
}

#[derive(Args, Debug)]
pub struct KeyImportArgs {
    /// The storage directory to write the owner key into (made if missing).
    #[arg(long)]
    pub storage: PathBuf,
    /// A file holding the 24 words [default: read them from standard input].
    #[arg(long, value_name = "FILE")]
    pub code_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where to create the key [default: DATA_DIR/pool.key].
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
}

/// The pool key a process proves on every connection.
#[derive(Args, Debug, Clone)]
pub struct KeyOpt {
    /// The pool key file, as made by `poolfs init` [default: DATA_DIR/pool.key].
    #[arg(long = "key", env = "POOLFS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// Empty directory to mount the pool on.
    pub mountpoint: PathBuf,
    /// Directory for this node's segments, identity and the namespace database.
    #[arg(long)]
    pub storage: PathBuf,
    #[command(flatten)]
    pub controller: ControllerOpt,
    /// Address this machine's node listens on; the default is every interface (see below).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], NODE_PORT)))]
    pub listen: SocketAddr,
    /// Space this node offers, e.g. 10G [default: free space of the storage disk].
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// Most bytes one member (one static key) may store on this node, e.g. 2G
    /// [default: no limit but the capacity].
    #[arg(long, value_parser = parse_size)]
    pub quota: Option<u64>,
    #[command(flatten)]
    pub redundancy: RedundancyOpt,
    #[command(flatten)]
    pub machine: MachineOpt,
    /// Let other users use the mount, with access checked against mode bits, owners
    /// and groups as on a local filesystem (a non-root mounter needs
    /// user_allow_other in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Seconds a node may stay down before its segments are rebuilt on other nodes
    /// (a node that leaves is repaired at once).
    #[arg(long, default_value_t = 60)]
    pub repair_grace: u64,
    /// Seconds a segment of this mount's that no live file names (a crashed copy's,
    /// a rebuild's that failed, an old copy on a node that came back) stays on its node
    /// before the mount's sweep removes it. The sweep runs every quarter of this (at
    /// least every second), so such a segment is gone within reclaim-after × 1.25 plus
    /// one pass of its last write (for a node that was away, of its return).
    #[arg(long, default_value_t = poolfs::fs::sweep::DEFAULT_RECLAIM_AFTER_SECS)]
    pub reclaim_after: u64,
    /// Memory for the metadata store's page cache, e.g. 64M: the namespace's and the
    /// manifests' pages kept in the mount's memory (the rest is read from the system's
    /// page cache); 32M holds the upper levels of millions of files' trees.
    #[arg(long, value_name = "SIZE", env = "POOLFS_META_CACHE", value_parser = parse_size,
          default_value = "32M")]
    pub meta_cache: u64,
    /// Store shards in clear, readable by the nodes that hold them: only to measure
    /// what encryption costs.
    #[arg(long)]
    pub no_encryption: bool,
    /// Keep the namespace on this disk only, not in the pool too: only to measure what
    /// keeping it in the pool costs (a lost disk then loses every file).
    #[arg(long, hide = true)]
    pub no_pool_namespace: bool,
    /// Rebuild this mount from the pool after its disk was lost: --storage must be an
    /// empty directory; the recovery code (`poolfs key export`) comes from --code-file,
    /// from an owner key imported there with `poolfs key import`, or from stdin.
    #[arg(long)]
    pub recover: bool,
    /// With --recover: a file holding the recovery code.
    #[arg(long, value_name = "FILE", requires = "recover")]
    pub code_file: Option<PathBuf>,
    /// Seconds of this mount's lease on its namespace: another mount of the same owner
    /// (a --recover elsewhere) is refused while it lasts; renewed every third of it,
    /// so after a crash it blocks recovery for at most this long.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(3..=3600))]
    pub lease: u64,
    /// At unmount, leave at once instead of first moving what this machine's node
    /// holds to other nodes: for a pool whose nodes all stop together (`poolfs up`
    /// sets it), where the hand-off has nowhere to go and would wait for nothing.
    #[arg(long)]
    pub no_hand_off: bool,
    /// Stay attached to the terminal instead of returning once mounted.
    #[arg(long, short = 'f')]
    pub foreground: bool,
    #[command(flatten)]
    pub key: KeyOpt,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where to mount the pool (created if missing).
    pub mountpoint: PathBuf,
    /// Members of the pool, the mount included.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    #[command(flatten)]
    pub redundancy: RedundancyOpt,
    /// Most bytes one member may store on each node, e.g. 2G [default: no limit].
    #[arg(long, value_parser = parse_size)]
    pub quota: Option<u64>,
    /// Seconds a node may stay down before its segments are rebuilt on other nodes
    /// [default: the mount's, 60].
    #[arg(long)]
    pub repair_grace: Option<u64>,
    /// Seconds a segment of this mount's that no live file names (a crashed copy's,
    /// a rebuild's that failed, an old copy on a node that came back) stays on its node
    /// before the mount's sweep removes it. The sweep runs every quarter of this (at
    /// least every second), so such a segment is gone within reclaim-after × 1.25 plus
    /// one pass of its last write (for a node that was away, of its return) [default: the mount's, 600].
    #[arg(long)]
    pub reclaim_after: Option<u64>,
    /// Where the pool's state lives (its keys, logs, storage directories and up.json,
    /// under DATA_DIR/up/) [default: DATA_DIR].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The pool key file, created if missing [default: a new key in the pool's state].
    #[arg(long = "key", env = "POOLFS_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Store shards in clear (see `mount --no-encryption`): benchmarks only.
    #[arg(long)]
    pub no_encryption: bool,
    /// Keep the namespace on the mount's disk only (see `mount --no-pool-namespace`):
    /// benchmarks only.
    #[arg(long, hide = true)]
    pub no_pool_namespace: bool,
    /// Let other users use the pool, with access checked against mode bits, owners
    /// and groups (on by itself when run through sudo).
    #[arg(long)]
    pub allow_other: bool,
}

#[derive(Args, Debug)]
pub struct ScrubArgs {
    /// The pool's mount point.
    pub mountpoint: PathBuf,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The mount point given to `up`.
    pub mountpoint: PathBuf,
    /// The data directory given to `up` [default: DATA_DIR, else the one the pool's
    /// running processes name].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// The controller of a client command that may find the pool itself (`put`, `get`).
#[derive(Args, Debug, Clone)]
pub struct PoolControllerOpt {
    /// Address of the pool's controller [default: the pool's that `poolfs up` started,
    /// when there is exactly one (with its key, unless --key is given), else
    /// 127.0.0.1:2000].
    #[arg(long, short = 'c', env = "POOLFS_CONTROLLER")]
    pub controller: Option<SocketAddr>,
}

#[derive(Args, Debug, Clone)]
pub struct ControllerOpt {
    /// Address of the pool's controller.
    #[arg(long, short = 'c', env = "POOLFS_CONTROLLER", default_value_t = SocketAddr::from(([127, 0, 0, 1], CONTROLLER_PORT)))]
    pub controller: SocketAddr,
}

#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Address to listen on; the default is every interface (see below).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], CONTROLLER_PORT)))]
    pub listen: SocketAddr,
    /// Directory for the membership registry [default: DATA_DIR/controller].
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Find nodes by an ARP sweep of this interface's subnet, or of this CIDR through
    /// the interface on it (repeatable). Needs root or CAP_NET_RAW.
    #[arg(long = "scan", value_name = "IFACE|CIDR")]
    pub scan: Vec<ScanTarget>,
    /// Port probed for a node on every host that answers the sweep.
    #[arg(long, default_value_t = NODE_PORT)]
    pub node_port: u16,
    /// Seconds between sweeps (0: sweep only at start and on `poolfs scan`).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub rescan_interval: u64,
    #[command(flatten)]
    pub key: KeyOpt,
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Directory holding this node's segments and identity.
    #[arg(long)]
    pub storage: PathBuf,
    /// Address to listen on; the default is every interface (see below).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], NODE_PORT)))]
    pub listen: SocketAddr,
    /// Controller to join; without it the node waits for the controller's signal.
    #[arg(long, short = 'c', env = "POOLFS_CONTROLLER")]
    pub controller: Option<SocketAddr>,
    /// Space offered to the pool, e.g. 10G [default: free space of the storage disk].
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// Most bytes one member (one static key) may store on this node, e.g. 2G
    /// [default: no limit but the capacity].
    #[arg(long, value_parser = parse_size)]
    pub quota: Option<u64>,
    #[command(flatten)]
    pub machine: MachineOpt,
    #[command(flatten)]
    pub key: KeyOpt,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Address of the pool's controller [default: the pool's that `poolfs up` started,
    /// when there is exactly one, else 127.0.0.1:2000].
    #[arg(long, short = 'c', env = "POOLFS_CONTROLLER")]
    pub controller: Option<SocketAddr>,
    #[command(flatten)]
    pub key: KeyOpt,
    /// Also show the health of every file of this mount and its repair progress
    /// (repeatable) [default: the mounts of this controller started with `poolfs up`,
    /// and without --json this machine's other mounts of it too].
    #[arg(long = "mount", value_name = "DIR")]
    pub mounts: Vec<PathBuf>,
    /// The data directory given to `up` [default: DATA_DIR].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the view (and the mounts' files) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ScanArgs {
    #[command(flatten)]
    pub controller: ControllerOpt,
    #[command(flatten)]
    pub key: KeyOpt,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CatalogOpt {
    /// Directory of manifests of offloaded files and of the key that owns their segments
    /// (client.key) [default: DATA_DIR/catalog].
    #[arg(long)]
    pub catalog: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The local file to offload.
    pub file: PathBuf,
    #[command(flatten)]
    pub redundancy: RedundancyOpt,
    /// Name in the catalog [default: the file's name].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub controller: PoolControllerOpt,
    #[command(flatten)]
    pub catalog: CatalogOpt,
    #[command(flatten)]
    pub key: KeyOpt,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Name the file was offloaded under.
    pub name: String,
    /// Where to write it (`-` for standard output).
    pub out: PathBuf,
    #[command(flatten)]
    pub controller: PoolControllerOpt,
    #[command(flatten)]
    pub catalog: CatalogOpt,
    #[command(flatten)]
    pub key: KeyOpt,
}

/// The shape of new files: `--redundancy K+M` or `--tolerate F` (`--parity M`, hidden,
/// is the old name of `--tolerate`).
#[derive(Args, Debug, Clone, Default)]
pub struct RedundancyOpt {
    /// Shape of new files: K data and M parity shards per stripe, on K + M distinct
    /// machines where the pool has them, such as 4+2 [default: by pool size: one segment
    /// per node up to 5 nodes (one of them parity from 3), 4+2 on 6, 4+3 on 7, 4+4 from 8].
    #[arg(long, value_name = "K+M", conflicts_with = "tolerate")]
    pub redundancy: Option<Redundancy>,
    /// Machines that may be off at once with every new file still readable: F parity
    /// shards and up to 4 data shards per stripe.
    #[arg(long, value_name = "F", alias = "parity", value_parser = parse_tolerate)]
    pub tolerate: Option<Redundancy>,
}

impl RedundancyOpt {
    /// The policy asked for: `Auto` when neither option is given.
    pub fn policy(&self) -> Redundancy {
        self.redundancy.or(self.tolerate).unwrap_or_default()
    }
}

/// `--tolerate F`: a number of machines, small enough for a stripe.
fn parse_tolerate(s: &str) -> Result<Redundancy, String> {
    let f: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected a number of machines such as 2"))?;
    Redundancy::tolerate(f).map_err(|e| e.to_string())
}

/// The machine a node runs on (`--machine`).
#[derive(Args, Debug, Clone, Default)]
pub struct MachineOpt {
    /// Name of the machine this node runs on: no two shards of a stripe go to nodes of
    /// one machine while other machines have room. Give nodes that share a machine
    /// (or a disk, or a power supply) the same name [default: the host name and the
    /// first 8 hex digits of a BLAKE3 hash of /etc/machine-id; the host name alone
    /// without it].
    #[arg(long, value_name = "NAME", value_parser = parse_machine)]
    pub machine: Option<String>,
}

impl MachineOpt {
    /// The name given, or this host's default name.
    pub fn name(&self) -> String {
        self.machine
            .clone()
            .unwrap_or_else(poolfs::node::default_machine_name)
    }
}

/// `--machine NAME`: 1 to 64 printable characters.
fn parse_machine(s: &str) -> Result<String, String> {
    let name = s.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(format!(
            "{s:?}: a machine name is 1 to 64 printable characters"
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_of(args: &[&str]) -> Result<Redundancy, String> {
        let argv = ["poolfs", "put", "f"].iter().chain(args);
        match Cli::try_parse_from(argv)
            .map_err(|e| e.to_string())?
            .command
        {
            Command::Put(put) => Ok(put.redundancy.policy()),
            other => Err(format!("parsed as {other:?}")),
        }
    }

    #[test]
    fn redundancy_tolerate_and_the_old_parity_flag_choose_the_shape() {
        assert_eq!(policy_of(&[]), Ok(Redundancy::Auto));
        assert_eq!(
            policy_of(&["--redundancy", "4+2"]),
            Ok(Redundancy::Exact { k: 4, m: 2 })
        );
        assert_eq!(policy_of(&["--tolerate", "3"]), Ok(Redundancy::Tolerate(3)));
        assert_eq!(policy_of(&["--parity", "0"]), Ok(Redundancy::Tolerate(0)));
        let both = policy_of(&["--redundancy", "4+2", "--tolerate", "1"]).unwrap_err();
        assert!(both.contains("cannot be used with"), "{both}");
        let bad = policy_of(&["--redundancy", "4"]).unwrap_err();
        assert!(bad.contains("expected K+M such as 4+2"), "{bad}");
        let wide = policy_of(&["--tolerate", "40"]).unwrap_err();
        assert!(wide.contains("at most 32"), "{wide}");
        // The old name works but is not advertised.
        let help = Cli::try_parse_from(["poolfs", "put", "--help"])
            .unwrap_err()
            .to_string();
        assert!(
            help.contains("--tolerate") && !help.contains("--parity"),
            "{help}"
        );
    }

    #[test]
    fn a_machine_name_is_one_to_64_printable_characters() {
        let parse = |name: &str| {
            Cli::try_parse_from(["poolfs", "node", "--storage", "s", "--machine", name])
                .map(|cli| match cli.command {
                    Command::Node(node) => node.machine.machine,
                    _ => None,
                })
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse("desk"), Ok(Some("desk".to_string())));
        assert!(parse("").is_err());
        assert!(parse(&"x".repeat(65)).is_err());
        assert!(parse("a\tb").is_err());
    }
}
