//! The `poolfs` binary: parse the command line, then call into the library.

mod cli;
mod key_cmd;
mod shell_cmd;
mod status_cmd;

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

use cli::{Cli, Command};
use poolfs::client::{catalog::Catalog, ClientConfig, PoolClient};
use poolfs::controller::{Controller, DiscoveryConfig};
use poolfs::daemon;
use poolfs::fs::mount::MountConfig;
use poolfs::node::{Node, NodeConfig};
use poolfs::proto::{ControllerRequest, Response, ScanReport};
use poolfs::trust::{
    default_key_path, new_owner_key_notice, Credentials, KeyError, OwnerKeyWatch, PoolKey,
    CLIENT_KEY_FILE,
};
use poolfs::util::{default_data_dir, human_size};

fn main() {
    poolfs::heap::limit_arenas();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("poolfs: error: {}", describe(&e));
        std::process::exit(1);
    }
}

/// The error and its causes, skipping a cause whose text the message already quotes
/// (our error types include their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Loads the pool key named by `--key` / `POOLFS_KEY`, or the default one.
fn load_key(opt: &cli::KeyOpt) -> Result<PoolKey> {
    match &opt.key {
        // A key the user named: making a new one would make another pool's.
        Some(path) => match PoolKey::load(path) {
            Err(KeyError::Missing(_)) => bail!(
                "no key file at {} (given with --key or POOLFS_KEY): give the path of the \
                 pool's key, as `poolfs init` made it or as it was copied from a member",
                path.display()
            ),
            other => Ok(other?),
        },
        None => Ok(PoolKey::load(&default_key_path())?),
    }
}

/// Credentials for a client that stores nothing: the pool key and a throwaway static key.
fn client_credentials(opt: &cli::KeyOpt) -> Result<std::sync::Arc<Credentials>> {
    Ok(std::sync::Arc::new(Credentials::ephemeral(&load_key(
        opt,
    )?)?))
}

/// Credentials for `put` and `get`: the pool key and the catalog's own static key
/// (`CATALOG/client.key`, made by the first `put`). Nodes keep segments per static key,
/// so only this key can fetch or delete the files its catalog lists.
fn catalog_credentials(
    key: &PoolKey,
    catalog: &std::path::Path,
    create: bool,
) -> Result<std::sync::Arc<Credentials>> {
    let path = catalog.join(CLIENT_KEY_FILE);
    let creds = if create {
        Credentials::persistent_at(key, &path)?
    } else {
        match Credentials::load_at(key, &path) {
            Err(KeyError::Missing(_)) => bail!(
                "no client key at {}: the files of a catalog can be fetched only with the \
                 key that stored them",
                path.display()
            ),
            other => other?,
        }
    };
    Ok(std::sync::Arc::new(creds))
}

fn init(args: cli::InitArgs) -> Result<()> {
    let given = args.key.is_some();
    let path = args.key.unwrap_or_else(default_key_path);
    PoolKey::create(&path)?;
    let path = path.canonicalize().unwrap_or(path);
    let shown = path.display();
    println!("created a new pool key in {shown} (mode 0600).");
    println!("Every member of the pool needs this same file: copy it over a channel you trust,");
    if given {
        // The same path there, given to every command with --key (or POOLFS_KEY).
        let dir = path
            .parent()
            .map_or_else(String::new, |d| d.display().to_string());
        println!("for example to the same path on another machine:");
        println!("    ssh OTHER-HOST mkdir -p {dir}");
        println!("    scp {shown} OTHER-HOST:{shown}");
        println!("and give that path with --key {shown} (or POOLFS_KEY={shown}).");
    } else {
        println!("for example to the default location on another machine:");
        println!("    ssh OTHER-HOST mkdir -p .local/share/poolfs");
        println!("    scp {shown} OTHER-HOST:.local/share/poolfs/pool.key");
        println!("or give its path with --key FILE (or POOLFS_KEY=FILE).");
    }
    println!("Keep it secret: whoever holds it can join the pool and read its view.");
    Ok(())
}

/// For commands that print a report: a closed standard output (`poolfs status |
/// head`) ends the process quietly, as it does `ls`, rather than with a panic of
/// `println!`. Rust sets SIGPIPE to be ignored at start; the servers keep that
/// (a peer that goes away must not kill them).
fn quiet_on_closed_stdout() {
    // SAFETY: restoring a signal's default disposition has no other effect.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn run(cli: Cli) -> Result<()> {
    if matches!(
        cli.command,
        Command::Init(_)
            | Command::Status(_)
            | Command::Scan(_)
            | Command::Key(cli::OwnerKeyCommand::Export(_))
            | Command::Completions(_)
            | Command::Manpage(_)
    ) {
        quiet_on_closed_stdout();
    }
    match cli.command {
        Command::Init(args) => init(args),
        Command::Controller(args) => runtime()?.block_on(async {
            let key = load_key(&args.key)?;
            let state = args
                .state
                .unwrap_or_else(|| default_data_dir().join("controller"));
            let discovery = (!args.scan.is_empty()).then(|| {
                let mut cfg = DiscoveryConfig::new(args.scan.clone());
                cfg.node_port = args.node_port;
                cfg.rescan_interval = (args.rescan_interval > 0)
                    .then(|| std::time::Duration::from_secs(args.rescan_interval));
                cfg
            });
            let mut signals = StopSignals::watch()?;
            let started = Controller::start_with(args.listen, state, &key, discovery).await;
            daemon::notify(started.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let _controller = started?;
            signals.recv().await;
            Ok(())
        }),
        Command::Node(args) => runtime()?.block_on(async {
            let key = load_key(&args.key)?;
            let mut signals = StopSignals::watch()?;
            let started = Node::start(NodeConfig {
                storage: args.storage,
                listen: args.listen,
                controller: args.controller,
                capacity: args.capacity,
                quota: args.quota,
                key,
                machine: args.machine.name(),
            })
            .await;
            daemon::notify(started.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            let node = started?;
            signals.recv().await;
            tokio::select! {
                _ = node.hand_off() => {}
                _ = signals.recv() => log::warn!("second signal: leaving without the hand-off"),
            }
            node.leave().await;
            Ok(())
        }),
        Command::Status(args) => runtime()?.block_on(status_cmd::status(args)),
        Command::Put(args) => runtime()?.block_on(put(args)),
        Command::Get(args) => runtime()?.block_on(get(args)),
        Command::Mount(args) => mount(args),
        Command::Up(args) => {
            let data = args.data_dir.unwrap_or_else(default_data_dir);
            let invoker = poolfs::up::sudo_invoker();
            let opts = poolfs::up::UpOptions {
                nodes: args.nodes,
                redundancy: args.redundancy.policy(),
                quota: args.quota,
                repair_grace: args.repair_grace,
                reclaim_after: args.reclaim_after,
                key: args.key.as_deref(),
                encrypt: !args.no_encryption,
                pool_namespace: !args.no_pool_namespace,
                allow_other: args.allow_other || invoker.is_some(),
                owner: invoker,
            };
            let state =
                poolfs::up::up(&data, &args.mountpoint, opts).map_err(anyhow::Error::msg)?;
            println!(
                "pool of {} nodes mounted at {} (controller {}); `poolfs down {}` stops it",
                args.nodes,
                state.mountpoint.display(),
                state.controller,
                state.mountpoint.display()
            );
            Ok(())
        }
        Command::Down(args) => {
            let unmounted = poolfs::up::down(args.data_dir.as_deref(), &args.mountpoint)
                .map_err(anyhow::Error::msg)?;
            let m = args.mountpoint.display();
            match unmounted {
                true => println!("unmounted {m} and stopped its pool"),
                false => println!("stopped the pool of {m} (it was not mounted)"),
            }
            Ok(())
        }
        Command::Scan(args) => runtime()?.block_on(scan(args)),
        Command::Key(cli::OwnerKeyCommand::Export(args)) => key_cmd::export(args),
        Command::Key(cli::OwnerKeyCommand::Import(args)) => key_cmd::import(args),
        Command::Completions(args) => shell_cmd::completions(args),
        Command::Manpage(args) => shell_cmd::manpage(args),
        Command::Scrub(args) => {
            let report = poolfs::fs::mount::scrub(&args.mountpoint).with_context(|| {
                format!(
                    "cannot scrub {} (is it a poolfs mount?)",
                    args.mountpoint.display()
                )
            })?;
            println!("{report}");
            Ok(())
        }
    }
}

fn mount(args: cli::MountArgs) -> Result<()> {
    let key = load_key(&args.key)?;
    // --recover: the recovery code becomes STORAGE/owner.key first, in the process the
    // user started (a detached copy has no terminal, and its stdout is the readiness
    // pipe): from --code-file, else from stdin unless `key import` put the key there.
    let started_by_parent = std::env::var_os("POOLFS_NOTIFY_READY").is_some();
    if args.recover && !started_by_parent {
        std::fs::create_dir_all(&args.storage)
            .with_context(|| format!("cannot create {}", args.storage.display()))?;
        key_cmd::install_for_recovery(&args.storage, args.code_file.as_deref())?;
    }
    let cfg = MountConfig {
        mountpoint: args.mountpoint,
        storage: args.storage,
        controller: args.controller.controller,
        listen: args.listen,
        capacity: args.capacity,
        quota: args.quota,
        redundancy: args.redundancy.policy(),
        machine: args.machine.name(),
        allow_other: args.allow_other,
        repair_grace: std::time::Duration::from_secs(args.repair_grace),
        reclaim_after: std::time::Duration::from_secs(args.reclaim_after),
        meta_cache: args.meta_cache,
        key,
        key_file: args.key.key.clone().unwrap_or_else(default_key_path),
        encrypt: !args.no_encryption,
        pool_namespace: !args.no_pool_namespace,
        lease: std::time::Duration::from_secs(args.lease),
        recover: args.recover,
        hand_off: !args.no_hand_off,
    };
    // A process started by `spawn_ready` (ours when detached, or `up`'s) leaves telling
    // the user about a new owner key to its parent, which has the terminal.
    let storage = cfg.storage.clone();
    let owner_key = OwnerKeyWatch::before(&storage);
    let forget_new_key = owner_key.clone();
    let recovering = args.recover;
    let tell_if_new_key = move || {
        // A recovery brings the owner key it was given: nothing new to keep.
        if owner_key.made_new() && !recovering {
            eprintln!("{}", new_owner_key_notice(&storage));
        }
    };
    if !args.foreground && !started_by_parent {
        // A mount point that cannot be used is refused before the storage directory and
        // its log are made for it.
        poolfs::fs::mount::check_mountpoint(&cfg.mountpoint)?;
        // Detach: run ourselves in the background and return once the mount is live.
        let mut again: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        again.push("--foreground".into());
        let log = cfg.storage.join("mount.log");
        let spawned = daemon::spawn_ready(&again, &log, std::time::Duration::from_secs(30));
        // The child removed a key it made if it failed before it was ready.
        tell_if_new_key();
        spawned.map_err(anyhow::Error::msg)?;
        return Ok(());
    }
    let was_ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ready_seen = was_ready.clone();
    let mounted = poolfs::fs::mount::run(cfg, move |ready| {
        ready_seen.store(ready.is_ok(), std::sync::atomic::Ordering::SeqCst);
        daemon::notify(ready);
        if !started_by_parent {
            tell_if_new_key();
        }
    });
    // Failed before the mount was ever ready: no file was stored under a key this
    // start made, so it goes (whoever started us then tells of no key to keep).
    if mounted.is_err() && !was_ready.load(std::sync::atomic::Ordering::SeqCst) && !recovering {
        forget_new_key.forget_if_new();
    }
    Ok(mounted?)
}

/// SIGINT and SIGTERM, watched from before a process says it is ready: a stop right
/// after the start (systemd's) is not lost to the default action, which would kill the
/// process before it leaves the pool.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts watching; call inside the runtime.
    fn watch() -> Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// Waits for the next signal, then tells systemd the process is stopping.
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        daemon::stopping();
        log::info!("shutting down");
    }
}
async fn scan(args: cli::ScanArgs) -> Result<()> {
    let addr = args.controller.controller;
    // A sweep takes a few seconds: wait for it well past the usual call timeout.
    let pool = poolfs::net::ConnPool::new(
        client_credentials(&args.key)?,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(120),
    );
    let report = match pool.call(addr, &ControllerRequest::Scan, None).await {
        Ok((Response::Scanned(report), _)) => report,
        Ok((other, _)) => bail!("controller {addr} answered {other:?}"),
        Err(e) => {
            return Err(e).with_context(|| format!("the controller at {addr} could not sweep"))
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", format_scan(&report));
    }
    Ok(())
}

fn format_scan(r: &ScanReport) -> String {
    let mut out = format!(
        "swept {} addresses in {:.2}s (ARP {:.2}s, probe {:.2}s): {} hosts answered, {} nodes, pool epoch {}\n",
        r.swept,
        (r.arp_ms + r.probe_ms) as f64 / 1000.0,
        r.arp_ms as f64 / 1000.0,
        r.probe_ms as f64 / 1000.0,
        r.responders.len(),
        r.nodes.len(),
        r.epoch
    );
    for n in &r.nodes {
        let note = match (n.new, n.assigned) {
            (true, _) => "new",
            (false, true) => "known, re-assigned",
            (false, false) => "known",
        };
        out.push_str(&format!("{:>4}  {:<22} {note}\n", n.id, n.addr.to_string()));
    }
    for addr in &r.elsewhere {
        out.push_str(&format!(
            "   -  {:<22} node of another controller's pool, left alone\n",
            addr.to_string()
        ));
    }
    for e in &r.errors {
        out.push_str(&format!("error: {e}\n"));
    }
    out
}

/// The controller and key of a client command: those given, else those of the one pool
/// that `poolfs up` started (when there is exactly one: `put` and `get` then reach it
/// as `status` does), else 127.0.0.1:2000 and the default key.
fn pool_of(
    controller: &cli::PoolControllerOpt,
    key: &cli::KeyOpt,
) -> (std::net::SocketAddr, cli::KeyOpt) {
    if let Some(addr) = controller.controller {
        return (addr, key.clone());
    }
    match poolfs::up::list(&default_data_dir()).as_slice() {
        [one] => (
            one.controller,
            cli::KeyOpt {
                key: key.key.clone().or_else(|| one.key.clone()),
            },
        ),
        _ => (
            std::net::SocketAddr::from(([127, 0, 0, 1], cli::CONTROLLER_PORT)),
            key.clone(),
        ),
    }
}

fn catalog_dir(opt: &cli::CatalogOpt) -> std::path::PathBuf {
    opt.catalog
        .clone()
        .unwrap_or_else(|| default_data_dir().join("catalog"))
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

async fn put(args: cli::PutArgs) -> Result<()> {
    let name = match args.name {
        Some(n) => n,
        None => args
            .file
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| {
                format!(
                    "{} has no usable file name; pass --name",
                    args.file.display()
                )
            })?,
    };
    let dir = catalog_dir(&args.catalog);
    let catalog = Catalog::new(&dir);
    let (controller, key) = pool_of(&args.controller, &args.key);
    let creds = catalog_credentials(&load_key(&key)?, &dir, true)?;
    let src = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("cannot open {}", args.file.display()))?;
    let len = src.metadata().await.map(|m| m.len()).unwrap_or(0);
    let owner = std::sync::Arc::new(catalog.owner_key()?);
    let mut cfg = ClientConfig::new(controller, creds, Some(owner));
    cfg.redundancy = args.redundancy.policy();
    let client = PoolClient::new(cfg);
    let bar = progress_bar(len);
    let started = Instant::now();
    let manifest = client
        .put(tokio::io::BufReader::new(src), |n| bar.set_position(n))
        .await
        .with_context(|| format!("cannot offload {}", args.file.display()))?;
    bar.finish_and_clear();
    catalog.save(&name, &manifest)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "stored {} as {name:?}: {} in {} segments (k={}, m={}) in {secs:.2}s ({}/s)",
        args.file.display(),
        human_size(manifest.size),
        manifest.place.holders.len(),
        manifest.place.layout.k,
        manifest.place.layout.m,
        human_size((manifest.size as f64 / secs.max(1e-9)) as u64)
    );
    Ok(())
}

async fn get(args: cli::GetArgs) -> Result<()> {
    let (controller, key) = pool_of(&args.controller, &args.key);
    let key = load_key(&key)?;
    let dir = catalog_dir(&args.catalog);
    let catalog = Catalog::new(&dir);
    let manifest = catalog.load(&args.name)?;
    let creds = catalog_credentials(&key, &dir, false)?;
    let owner = std::sync::Arc::new(catalog.owner_key()?);
    let client = PoolClient::new(ClientConfig::new(controller, creds, Some(owner)));
    let started = Instant::now();
    let bar = progress_bar(manifest.size);
    if args.out.as_os_str() == "-" {
        client
            .get(&manifest, tokio::io::stdout(), |n| bar.set_position(n))
            .await?;
    } else {
        // Write beside the target and rename, so a failed fetch never leaves a
        // truncated file under the requested name.
        let tmp = args.out.with_extension("poolfs-partial");
        let out = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, out);
        let fetched = client
            .get(&manifest, &mut out, |n| bar.set_position(n))
            .await;
        if let Err(e) = fetched {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e).with_context(|| format!("cannot fetch {:?}", args.name));
        }
        out.into_inner().sync_all().await?;
        tokio::fs::rename(&tmp, &args.out)
            .await
            .with_context(|| format!("cannot write {}", args.out.display()))?;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fetched {:?}: {} in {secs:.2}s ({}/s)",
        args.name,
        human_size(manifest.size),
        human_size((manifest.size as f64 / secs.max(1e-9)) as u64)
    );
    Ok(())
}
