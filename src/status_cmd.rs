//! `poolfs status`: the pool's members and room, each node's bytes as it counts them
//! now, and the health of the local mounts' files.

use anyhow::{bail, Context, Result};

use crate::cli;
use crate::{client_credentials, default_data_dir, describe};
use poolfs::proto::{ControllerRequest, PoolView, Response};
use poolfs::util::human_size;

/// Where `status` looks: the controller, the key to prove, and the mounts whose files
/// to show (each with whether the user named it).
struct StatusTarget {
    controller: std::net::SocketAddr,
    key: Option<std::path::PathBuf>,
    mounts: Vec<(std::path::PathBuf, bool)>,
    /// Nothing told `status` where the pool is: no --controller, no mount named, no
    /// pool that `up` started recorded. The default controller is then only a guess.
    guessed: bool,
    /// The poolfs mounts of the mount table (mount point, controller): named in the
    /// message of a `status` that found no pool.
    table: Vec<(std::path::PathBuf, std::net::SocketAddr)>,
}

/// Explicit options first; else the pool `poolfs up` started at the first mount named
/// with `--mount` (found as `down` finds it, whatever its data directory), or the
/// controller the mount table gives as that mount's source (a mount made by hand or
/// by `mount -t poolfs`); else the pool `poolfs up` started (when there is one). Their
/// controller, key and mount are recorded in their state. The mount table is read for
/// a mount named only: other poolfs mounts may be anyone's, and walking one whose
/// pool is cut off would hang a `status` that did not ask for it.
fn status_target(args: &cli::StatusArgs) -> StatusTarget {
    let data = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let ups = poolfs::up::list(&data);
    let named = args
        .mounts
        .iter()
        .find_map(|m| poolfs::up::find(args.data_dir.as_deref(), m).ok())
        .map(|(_, state)| state);
    let table = poolfs::fs::mount::poolfs_mounts();
    let named_in_table = args.mounts.iter().find_map(|m| {
        let m = m.canonicalize().ok()?;
        table.iter().find(|(mp, _)| *mp == m).map(|(_, c)| *c)
    });
    let default_ctrl = std::net::SocketAddr::from(([127, 0, 0, 1], cli::CONTROLLER_PORT));
    let controller = args
        .controller
        .or(named.as_ref().map(|s| s.controller))
        .or(named_in_table)
        .unwrap_or(match ups.as_slice() {
            [one] => one.controller,
            _ => default_ctrl,
        });
    let of_this_pool: Vec<_> = ups.iter().filter(|u| u.controller == controller).collect();
    let key = args.key.key.clone().or_else(|| {
        named
            .iter()
            .chain(of_this_pool.iter().copied())
            .filter(|u| u.controller == controller)
            .find_map(|u| u.key.clone())
    });
    let mounts = if args.mounts.is_empty() {
        // The `up` pool's mount, and in the report for a reader any other mount of this
        // pool on this machine (one made by `poolfs mount` or mount(8) shows the
        // controller as its source). Not with --json: scripts poll that for the pool's
        // view, and a mount's report waits on every node (seconds while one is cut off).
        let mut mounts: Vec<(std::path::PathBuf, bool)> = of_this_pool
            .iter()
            .map(|u| (u.mountpoint.clone(), false))
            .collect();
        for (mp, c) in table.iter().filter(|_| !args.json) {
            if *c == controller && !mounts.iter().any(|(m, _)| m == mp) {
                mounts.push((mp.clone(), false));
            }
        }
        mounts
    } else {
        args.mounts.iter().map(|m| (m.clone(), true)).collect()
    };
    StatusTarget {
        guessed: args.controller.is_none()
            && named.is_none()
            && named_in_table.is_none()
            && ups.is_empty(),
        controller,
        key,
        mounts,
        table,
    }
}

pub(crate) async fn status(args: cli::StatusArgs) -> Result<()> {
    let target = status_target(&args);
    let addr = target.controller;
    // A refused key is the user's to fix before anything else: no report of the mounts
    // comes first (an unreachable controller still lets them be shown).
    let mut key_refused = false;
    let view = async {
        let pool = poolfs::net::ConnPool::new(
            client_credentials(&cli::KeyOpt {
                key: target.key.clone(),
            })?,
            std::time::Duration::from_secs(2),
            std::time::Duration::from_secs(5),
        );
        let mut view = match pool.call(addr, &ControllerRequest::Pool, None).await {
            Ok((Response::Pool(view), _)) => view,
            Ok((other, _)) => bail!("controller {addr} answered {other:?}"),
            // It listens, and refused the handshake: the key is the thing to look at.
            Err(poolfs::net::NetError::Handshake { .. }) => {
                key_refused = true;
                bail!(
                    "the controller at {addr} refused our pool key: the key file status used ({}) \
                 is not that pool's; give the pool's key with --key FILE",
                    target
                        .key
                        .clone()
                        .unwrap_or_else(crate::default_key_path)
                        .display()
                )
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot get the pool view from the controller at {addr}")
                })
            }
        };
        current_usage(&pool, &mut view).await;
        Ok(view)
    }
    .await;
    if key_refused {
        return view.map(|_| ());
    }
    if let (Err(e), true) = (&view, target.guessed) {
        let data = args.data_dir.clone().unwrap_or_else(default_data_dir);
        let down = poolfs::up::list_down(&data);
        if let Some(first) = down.first() {
            let names: Vec<String> = down.iter().map(|m| m.display().to_string()).collect();
            bail!(
                "no pool is up: the pool{} of {} {} down (stopped by `poolfs down`, its \
                 files kept in {}); `poolfs up {}` starts it again",
                if down.len() == 1 { "" } else { "s" },
                names.join(", "),
                if down.len() == 1 { "is" } else { "are" },
                data.join("up").display(),
                first.display()
            );
        }
        let key = target.key.clone().unwrap_or_else(crate::default_key_path);
        let why = if key.exists() {
            format!(
                "the default controller at {addr} gave no view ({})",
                e.root_cause()
            )
        } else {
            format!("there is no pool key at {}", key.display())
        };
        let mounted: Vec<String> = target
            .table
            .iter()
            .map(|(mp, c)| format!("{} (controller {c})", mp.display()))
            .collect();
        let hint = match mounted.is_empty() {
            true => String::new(),
            false => format!(
                ". Mounted here: {}; `poolfs status --mount DIR` shows one",
                mounted.join(", ")
            ),
        };
        bail!(
            "no pool to show: none that `poolfs up` started is recorded in {}, and {why}. \
             Start one with `poolfs up ~/pool`, or name a pool's controller with \
             --controller ADDR (and its key with --key FILE){hint}",
            data.display(),
        );
    }
    // Each mount's files, read through its attributes (no controller needed for that).
    let mut mounts = Vec::new();
    let mut mount_errors = Vec::new();
    let mut named_errors = Vec::new();
    for (mp, named) in &target.mounts {
        if !named && !poolfs::fs::mount::is_mountpoint(mp) {
            // A pool `up` recorded whose mount is gone: nothing to walk.
            let m = mp.display();
            mount_errors.push(if view.is_ok() {
                format!(
                    "{m}: not mounted, but the rest of its pool (its controller and nodes) \
                     still runs: `poolfs down {m}` stops it, then `poolfs up {m}` starts and \
                     mounts it again"
                )
            } else {
                format!(
                    "{m}: not mounted, and its controller does not answer: `poolfs down \
                     {m}` clears what is left of it"
                )
            });
            continue;
        }
        let walked = tokio::task::block_in_place(|| poolfs::fs::status::mount_status(mp));
        match walked {
            Ok(st) => mounts.push(st),
            // A mount the user named that cannot be shown is the command's error (below).
            Err(e) if *named => named_errors.push(e.to_string()),
            Err(e) => mount_errors.push(e.to_string()),
        }
    }
    if args.json {
        let view = view
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{}", describe(e)))?;
        if target.mounts.is_empty() {
            println!("{}", serde_json::to_string_pretty(&view)?);
        } else {
            let mut json = serde_json::to_value(view)?;
            json["mounts"] = serde_json::to_value(&mounts)?;
            json["mount_errors"] =
                serde_json::to_value(mount_errors.iter().chain(&named_errors).collect::<Vec<_>>())?;
            println!("{}", serde_json::to_string_pretty(&json)?);
        }
    } else {
        if let Ok(view) = &view {
            let own: Vec<(u32, &std::path::Path)> = mounts
                .iter()
                .filter_map(|m| Some((m.risk.as_ref()?.own_node?, m.mountpoint.as_path())))
                .collect();
            print!("{}", format_status(view, &own));
        }
        for st in &mounts {
            print!("\n{}", st.render());
        }
        for e in &mount_errors {
            println!("\nmount {e}");
        }
    }
    view?;
    match named_errors.as_slice() {
        [] => {}
        [why] => bail!("cannot show mount {why}"),
        whys => bail!("cannot show every mount: {}", whys.join("; ")),
    }
    Ok(())
}

/// Each live node's bytes in use as it counts them now (its STAT), in place of what it
/// last told the controller (up to a heartbeat old): `status` right after a `cp`
/// shows what that `cp` stored. A node that does not answer keeps the controller's.
async fn current_usage(pool: &poolfs::net::ConnPool, view: &mut PoolView) {
    let asks = view.live().into_iter().map(|n| {
        let (id, addr) = (n.id, n.addr);
        async move {
            match pool
                .call(addr, &poolfs::proto::NodeRequest::Stat, None)
                .await
            {
                Ok((Response::Stat(stat), _)) => Some((id, stat.used)),
                _ => None,
            }
        }
    });
    for (id, used) in futures::future::join_all(asks).await.into_iter().flatten() {
        if let Some(n) = view.nodes.iter_mut().find(|n| n.id == id) {
            n.used = used;
        }
    }
}

/// The pool's table for a person: how many nodes are up, the pool's room with each
/// disk counted once, one line per node (`own`: the nodes that run in the mounts
/// shown, marked), and which nodes share a disk.
fn format_status(view: &PoolView, own: &[(u32, &std::path::Path)]) -> String {
    let room = view.room();
    let mut out = format!(
        "pool: {} of {} up; {} used of {}, {} free (a disk that nodes share counted once)\n\
         {:>4}  {:<22} {:<7} {:>23}  {:<10}  {}\n",
        view.live().len(),
        poolfs::util::count(view.nodes.len() as u64, "node", "nodes"),
        human_size(room.used),
        human_size(room.size),
        human_size(room.free),
        "ID",
        "ADDRESS",
        "STATE",
        "USED / CAPACITY",
        "LAST SEEN",
        "MACHINE"
    );
    for n in &view.nodes {
        let machine = if n.machine.is_empty() {
            "?"
        } else {
            &n.machine
        };
        let mut line = format!(
            "{:>4}  {:<22} {:<7} {:>23}  {:<10}  {machine}",
            n.id,
            n.addr.to_string(),
            n.state.to_string(),
            format!("{} / {}", human_size(n.used), human_size(n.capacity)),
            format!("{:.1}s ago", n.last_seen_ms as f64 / 1000.0),
        );
        for (_, mp) in own.iter().filter(|(id, _)| *id == n.id) {
            line.push_str(&format!("  (the node of mount {})", mp.display()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    // Nodes up on one machine and one filesystem: their room is shared, say so.
    let mut disks: std::collections::BTreeMap<(&str, u64), Vec<&poolfs::proto::NodeInfo>> =
        Default::default();
    for n in view.live().into_iter().filter(|n| n.disk.fsid != 0) {
        disks
            .entry((n.machine.as_str(), n.disk.fsid))
            .or_default()
            .push(n);
    }
    for nodes in disks.values().filter(|nodes| nodes.len() > 1) {
        let ids: Vec<String> = nodes.iter().map(|n| n.id.to_string()).collect();
        let disk = nodes[0].disk;
        out.push_str(&format!(
            "nodes {} keep their segments on one disk of {} ({} free): each may offer \
             that free space, the pool counts it once\n",
            ids.join(", "),
            human_size(disk.size),
            human_size(disk.free)
        ));
    }
    out
}
