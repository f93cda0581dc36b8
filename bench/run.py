#!/usr/bin/env python3
"""poolfs benchmark: issue 7's and issue 16's target tables, measured in one run against
a tmpfs baseline.

usage: python3 bench/run.py [--size-mib 1024] [--rss-size-mib 4096] [--runs 3] [--files 1000]
                            [--only default,parity0,noenc] [--tables issue7,issue16] [--peers]
                            [--rand-writes 1024] [--randw-mib 256] [--fsx-secs 10]
                            [--tree-files 50000] [--bin target/release/poolfs]
                            [--json FILE] [--quick] [--namespace-cost] [--scale N,N,...]

Needs root (mounts tmpfs, drops the page cache) and fuse3. Everything it starts (pools,
tmpfs mounts, peers, temp dirs) is stopped and removed at the end, also on failure or
Ctrl-C.

Table issue7: for each configuration (the default 3-node pool with k = 2, m = 1 and
encryption; the same with `--parity 0`; the same with `--no-encryption`) it starts its
own loopback pool with `poolfs up`, measures cp / cat / small files / first byte / peak
memory, then starts a 4-node pool (m = 1), kills one storage node it started in the
middle of a timed read, and reports the longest read() call. The tmpfs baseline runs
are interleaved with the pool's runs, so ratios compare figures taken under the same load.

Table issue16 (bench/issue16.py): on tmpfs and a 3-node pool (k=2, m=1, encrypted, in a
network namespace of its own so its loopback bytes can be counted), and with --peers
also on bindfs, sshfs and GlusterFS disperse 2+1 / distributed (bench/peers.py; their
Debian packages installed and purged), interleaved: 4 KiB creates then sync, rm, the
cold first byte (unbuffered and Python's buffered read), random 4 KiB writes with an
fsync every 64 and the bytes they move on the wire, an fsx-style run with mmap
(bench/fsx.py; a wrong byte fails the bench), stat of a 50 000-file tree, cp and cat.

--scale N,N,... (bench/scale.py, issue 16) fills one pool to each count of 4 KiB files
and reports the mount's memory, its mount time and create/stat/unlink rates, and whether
each stays flat.

--namespace-cost (issue 15) measures instead what keeping the namespace in the pool
costs: on one 3-node pool, two owners mount side by side (k=2, m=1), one as usual and
one with `--no-pool-namespace` (its namespace only on its own disk); runs alternate
between them (the order flipping every run) and each does small-file creates (4 KiB
create + write + close, then `sync -f` of the mount) and `cp` of the big file through
close. It prints the medians and their ratio against the target (at most 10 % slower).
"""
import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import issue16
import peers
import scale
from common import (MIB, Pools, deferred_signals, drop_caches, fmt, is_ours, med,
                    proc_status, sh, timed)

# name, `poolfs up` arguments, title
CONFIGS = {
    "default": ([], "k=2 m=1, encrypted"),
    "parity0": (["--parity", "0"], "--parity 0"),
    "noenc": (["--no-encryption"], "--no-encryption"),
}

# key, label, unit, kind, target: "ratio" targets compare with tmpfs, the rest are absolute
METRICS = [
    ("cp", "cp of the big file into the mount, through close", "MiB/s", "ratio", 0.25),
    ("cat", "cat of it after dropping the page cache", "MiB/s", "ratio", 0.15),
    ("small", "create + write + close of 4 KiB files", "files/s", "ratio", 0.07),
    ("ttfb", "open + read of the first byte, caches dropped", "ms", "max", 1.0),
    ("rss", "peak resident memory of the mount, copying the RSS file", "MiB", "max", 256.0),
    ("stall", "longest read() when a node is killed mid-read (4 nodes, m=1)", "ms", "below", 1000.0),
]


def write_random(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def small_files(d, count):
    os.makedirs(d)
    bufs = [os.urandom(4096) for _ in range(16)]
    t = time.perf_counter()
    for i in range(count):
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(bufs[i % 16])
    return count / (time.perf_counter() - t)


def first_byte(path):
    """Seconds from open to the first byte, in this process, caches dropped."""
    drop_caches()
    t = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        got = os.read(fd, 1)
    finally:
        os.close(fd)
    took = time.perf_counter() - t
    if len(got) != 1:
        raise RuntimeError(f"{path}: no first byte")
    return took


def one_run(target, src, size_mib, files, tag):
    """cp, cat, first byte and small files in directory `target`: MiB/s, MiB/s, ms, files/s."""
    dst = os.path.join(target, f"big-{tag}")
    cp = size_mib / timed(lambda: sh("cp", src, dst))
    drop_caches()
    cat = size_mib / timed(lambda: sh("cat", dst, stdout=subprocess.DEVNULL))
    ttfb = first_byte(dst) * 1000
    os.unlink(dst)
    d = os.path.join(target, f"small-{tag}")
    small = small_files(d, files)
    shutil.rmtree(d)
    return {"cp": cp, "cat": cat, "ttfb": ttfb, "small": small}


def peak_rss(pid, src, dst):
    """Peak resident bytes of process `pid` while `cp src dst` runs: VmHWM after resetting
    it, and VmRSS sampled every 20 ms (in case the kernel cannot reset the peak)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5\n")
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.02):
            peak[0] = max(peak[0], proc_status(pid, "VmRSS"))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        sh("cp", src, dst)
    finally:
        done.set()
        t.join()
    os.unlink(dst)
    return max(peak[0], proc_status(pid, "VmHWM"))


def segment_holder(data, state):
    """The pid of the storage node holding segment 0 (a data shard) of the one file in
    the pool, so that the kill forces reads to reconstruct; else the first storage node."""
    state_dir = os.path.dirname(Pools.state_file(data))
    storage = state["pids"][2:]  # pids: mount, controller, node-1, node-2, ...
    for i, pid in enumerate(storage, start=1):
        for _root, _dirs, names in os.walk(os.path.join(state_dir, f"node-{i}", "segments")):
            if "0.seg" in names:
                return pid
    return storage[0]


def timed_read(path, want, kill=None, chunk=128 * 1024):
    """Reads `path` sequentially; returns (longest read() in seconds, error or None).
    `kill`: called from another thread once a quarter of the file has been read; an
    error if the read was over by then."""
    size = os.path.getsize(path)
    h = hashlib.blake2b()
    longest, done, err = 0.0, 0, None
    quarter, finished, late = threading.Event(), threading.Event(), []

    def killer_main():
        quarter.wait()
        kill()
        if finished.is_set():
            late.append(True)

    killer = None
    if kill:
        killer = threading.Thread(target=killer_main, daemon=True)
        killer.start()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            t = time.perf_counter()
            buf = os.read(fd, chunk)
            longest = max(longest, time.perf_counter() - t)
            if not buf:
                break
            h.update(buf)
            done += len(buf)
            if done >= size // 4:
                quarter.set()
    except OSError as e:
        err = f"read failed at byte {done}: {e}"
    finally:
        finished.set()
        os.close(fd)
        quarter.set()
        if killer:
            killer.join()
    if late and err is None:
        err = "the read was over before the node was killed (use a bigger --size-mib)"
    if err is None and (done != size or h.hexdigest() != want):
        err = f"read back {done} of {size} bytes, content {'differs' if done == size else 'short'}"
    return longest, err


def stall_run(pools, binary, extra, src, want):
    """One 4-node pool, m = 1: longest read() of a cold read without and with a node killed."""
    mnt, data, state = pools.up(4, [*extra, "--parity", "1"])
    try:
        dst = os.path.join(mnt, "big")
        sh("cp", src, dst)
        drop_caches()
        calm, err = timed_read(dst, want)
        if err:
            return calm, None, f"without a kill: {err}"
        victim = segment_holder(data, state)
        drop_caches()
        killed = []

        def kill():
            if is_ours(victim, binary):
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                print(f"  killed storage node pid {victim} (holder of segment 0)", file=sys.stderr)

        worst, err = timed_read(dst, want, kill)
        if not killed:
            err = err or "the node was gone before the kill"
        return calm, worst, err
    finally:
        pools.down(mnt, data)


def disk_floor(work, runs):
    """What the pool's own disk (where its nodes and metadata live) takes, with nothing
    of poolfs in the way: the first byte of a file on it after dropping the caches, as
    first_byte measures, and one 4 KiB write made durable (what any close that means
    stored must wait for at least once)."""
    path = os.path.join(work, "disk-floor")
    with open(path, "wb") as f:
        f.write(os.urandom(64 * MIB))
    ttfb = med([first_byte(path) * 1000 for _ in range(max(runs, 5))])
    syncs = []
    fd = os.open(path, os.O_WRONLY)
    try:
        for i in range(200):
            os.pwrite(fd, os.urandom(4096), (i % 64) * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            syncs.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"ttfb": ttfb, "fdatasync": med(syncs)}


def measure_config(name, a, pools, binary, src, rss_src, base):
    extra, _title = CONFIGS[name]
    res = {"cp": [], "cat": [], "ttfb": [], "small": []}
    mnt, data, state = pools.up(a.nodes, extra)
    try:
        for r in range(a.runs):
            for k, v in one_run(base["dir"], src, a.size_mib, a.files, f"{name}{r}").items():
                base[k].append(v)
            for k, v in one_run(mnt, src, a.size_mib, a.files, f"{name}{r}").items():
                res[k].append(v)
            print(f"  {name} run {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in res.items()),
                  file=sys.stderr)
        out = {k: med(v) for k, v in res.items()}
        out["rss"] = None
        if rss_src:
            out["rss"] = peak_rss(state["pids"][0], rss_src, os.path.join(mnt, "rss")) / MIB
    finally:
        pools.down(mnt, data)
    out["stall"], out["stall_worst"], out["stall_calm"], out["stall_errors"] = None, None, None, []
    if a.stall_runs and name != "parity0":  # without parity a lost node loses data
        want = hashlib.blake2b(open(src, "rb").read()).hexdigest()
        stalls, calms = [], []
        for r in range(a.stall_runs):
            calm, worst, err = stall_run(pools, binary, extra, src, want)
            calms.append(calm)
            if err:
                out["stall_errors"].append(err)
            else:
                stalls.append(worst)
            print(f"  {name} stall run {r + 1}: calm {calm * 1000:.1f} ms, with kill "
                  f"{'-' if worst is None else f'{worst * 1000:.1f} ms'}{f' ({err})' if err else ''}",
                  file=sys.stderr)
        out["stall"] = None if out["stall_errors"] else med(stalls) * 1000
        out["stall_worst"] = max(stalls) * 1000 if stalls else None
        out["stall_calm"] = med(calms) * 1000
    return out


def verdict(kind, target, value, ratio):
    if value is None:
        return "n/a"
    x = ratio if kind == "ratio" else value
    ok = x >= target if kind == "ratio" else (x <= target if kind == "max" else x < target)
    return "pass" if ok else "FAIL"


def ratio_of(key, base, value):
    if value is None or key not in base or base[key] is None:
        return None
    return base[key] / value if key == "ttfb" else value / base[key]


# Issue 15: what keeping the namespace in the pool costs, against --no-pool-namespace.
NS_CONFIGS = [("local", ["--no-pool-namespace"], "--no-pool-namespace"),
              ("pool", [], "namespace in the pool")]
NS_METRICS = [("small", "create + write + close of 4 KiB files, then sync", "files/s"),
              ("cp", "cp of the big file into the mount, through close", "MiB/s")]
NS_TARGET = 0.90  # the pool namespace may cost at most 10 %


def small_files_synced(d, count):
    """Files/s of `count` 4 KiB files created, written and closed in `d`, then `sync -f`
    of the filesystem (syncfs: after it, the namespace change is in the pool)."""
    os.makedirs(d)
    bufs = [os.urandom(4096) for _ in range(16)]
    t = time.perf_counter()
    for i in range(count):
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(bufs[i % 16])
    sh("sync", "-f", d)
    return count / (time.perf_counter() - t)


class OwnerMounts:
    """Mounts made with `poolfs mount` on a pool `up` started, each with a storage
    directory (so an owner) of its own; all unmounted and stopped by `close`."""

    def __init__(self, binary, work):
        self.binary, self.work, self.live = binary, work, []

    def pids_of(self, mnt):
        """Our poolfs processes whose command line names `mnt`."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    args = f.read().split(b"\0")
            except OSError:
                continue
            if is_ours(int(d), self.binary) and mnt.encode() in args:
                out.append(int(d))
        return out

    def mount(self, name, state, extra):
        mnt = os.path.join(self.work, name)
        storage = os.path.join(self.work, f"{name}.storage")
        os.makedirs(mnt)
        self.live.append(mnt)
        with deferred_signals():
            subprocess.run(
                [self.binary, "mount", mnt, "--storage", storage,
                 "--controller", f"{state['controller']}", "--listen", "127.0.0.1:0",
                 "--key", state["key"], *extra],
                check=True, stdout=subprocess.DEVNULL, start_new_session=True)
        pids = self.pids_of(mnt)
        if len(pids) != 1:
            raise RuntimeError(f"expected one mount process for {mnt}: {pids}")
        return mnt, pids[0]

    def close(self):
        for mnt in list(self.live):
            with deferred_signals():
                pids = self.pids_of(mnt)
                if subprocess.run(["fusermount3", "-u", mnt], stderr=subprocess.DEVNULL).returncode != 0:
                    subprocess.run(["fusermount3", "-u", "-z", mnt], stderr=subprocess.DEVNULL)
                deadline = time.time() + 10
                while any(is_ours(p, self.binary) for p in pids) and time.time() < deadline:
                    time.sleep(0.05)
                for pid in pids:
                    if is_ours(pid, self.binary):
                        print(f"bench: mount {mnt} (pid {pid}) did not exit, killing it", file=sys.stderr)
                        os.kill(pid, signal.SIGKILL)
                self.live.remove(mnt)


def namespace_cost(a, pools, binary, src):
    """Medians of small-file creates and cp, per NS_CONFIGS name, from runs interleaved
    on one pool; and every run's figures."""
    mnt0, data, state = pools.up(3, ["--redundancy", "2+1"])
    owners = OwnerMounts(binary, pools.work)
    runs = {name: {"small": [], "cp": []} for name, _, _ in NS_CONFIGS}
    try:
        # `up`'s own mount leaves the pool: the two measured owners are the mounts.
        sh("fusermount3", "-u", mnt0)
        mounts = {name: owners.mount(f"ns-{name}", state, ["--redundancy", "2+1", *extra])[0]
                  for name, extra, _ in NS_CONFIGS}
        for r in range(a.runs):
            order = NS_CONFIGS if r % 2 == 0 else list(reversed(NS_CONFIGS))
            for name, _, _ in order:
                mnt = mounts[name]
                d = os.path.join(mnt, f"small-{r}")
                runs[name]["small"].append(small_files_synced(d, a.files))
                dst = os.path.join(mnt, f"big-{r}")
                runs[name]["cp"].append(a.size_mib / timed(lambda: sh("cp", src, dst)))
                os.unlink(dst)
                shutil.rmtree(d)
                print(f"  {name} run {r + 1}: small {runs[name]['small'][-1]:.0f} files/s, "
                      f"cp {runs[name]['cp'][-1]:.0f} MiB/s", file=sys.stderr)
    finally:
        owners.close()
        pools.down(mnt0, data)
    return {name: {k: med(v) for k, v in figs.items()} for name, figs in runs.items()}, runs


def namespace_report(a, res, meta):
    lines = [f"poolfs benchmark: the namespace in the pool, commit {meta['commit']}, {meta['machine']}",
             f"3-node loopback pool (k=2, m=1), two owners mounted side by side, {a.size_mib} MiB "
             f"file, {a.files} small files, medians of {a.runs} interleaved runs", "",
             "| what | unit | --no-pool-namespace | namespace in the pool | ratio | target | result |",
             "| --- | --- | ---: | ---: | ---: | --- | --- |"]
    for key, label, unit in NS_METRICS:
        local, pool = res["local"][key], res["pool"][key]
        ratio = pool / local if local else None
        result = "n/a" if ratio is None else ("pass" if ratio >= NS_TARGET else "FAIL")
        lines.append(f"| {label} | {unit} | {fmt(local)} | {fmt(pool)} | "
                     f"{'-' if ratio is None else f'{ratio:.3f}x'} | >= {NS_TARGET}x | {result} |")
    return "\n".join(lines)


def report(a, base, results, meta, floor=None):
    lines = [f"poolfs benchmark, commit {meta['commit']}, {meta['machine']}",
             f"{a.nodes}-node loopback pool, {a.size_mib} MiB file, {a.files} small files, "
             f"{a.rss_size_mib} MiB file for memory, medians of {a.runs} runs "
             f"({a.stall_runs} for the kill)", ""]
    if "default" in results:
        r = results["default"]
        lines += ["Targets (k=2, m=1, encryption and checksums on):", "",
                  "| what | unit | tmpfs | poolfs | ratio | target | result |",
                  "| --- | --- | ---: | ---: | ---: | --- | --- |"]
        for key, label, unit, kind, target in METRICS:
            ratio = ratio_of(key, base, r[key])
            want = f">= {target}x tmpfs" if kind == "ratio" else f"{'<=' if kind == 'max' else '<'} {target:g} {unit}"
            lines.append(f"| {label} | {unit} | {fmt(base.get(key), none='-')} | {fmt(r[key])} | "
                         f"{'-' if ratio is None else f'{ratio:.3f}x'} | {want} | {verdict(kind, target, r[key], ratio)} |")
        lines.append("")
    names = [n for n in CONFIGS if n in results]
    lines += ["Each cost (ratio to tmpfs in brackets):", "",
              "| what | tmpfs | " + " | ".join(CONFIGS[n][1] for n in names) + " |",
              "| --- | ---: |" + " ---: |" * len(names)]
    for key, label, unit, kind, target in METRICS:
        cells = [fmt(results[n][key], ratio_of(key, base, results[n][key])) for n in names]
        lines.append(f"| {label} ({unit}) | {fmt(base.get(key), none='-')} | " + " | ".join(cells) + " |")
    lines.append(f"| same read, no node killed: longest read() (ms) | - | "
                 + " | ".join(fmt(results[n]["stall_calm"]) for n in names) + " |")
    lines.append(f"| worst of the kill runs: longest read() (ms) | - | "
                 + " | ".join(fmt(results[n]["stall_worst"]) for n in names) + " |")
    for n in names:
        for e in results[n]["stall_errors"]:
            lines.append(f"\n{n}: node-kill read error: {e}")
    if floor:
        lines += ["", "The pool's disk alone (no poolfs), for the first byte and small-file figures:",
                  f"- first byte of a file on it, caches dropped: {fmt(floor['ttfb'])} ms",
                  f"- one 4 KiB write made durable (fdatasync): {fmt(floor['fdatasync'])} ms, "
                  f"so at most {1000 / floor['fdatasync']:.0f} durable closes/s one after another"]
    return "\n".join(lines)


def meta_info(binary):
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    return {"commit": commit, "binary": binary,
            "machine": f"{os.cpu_count()} cores, {mem / 2**30:.0f} GiB, Linux {platform.release()}"}


def interrupted(_signum, _frame):
    raise KeyboardInterrupt


def parse_args(argv):
    ap = argparse.ArgumentParser(description="poolfs benchmark against tmpfs (issues 7 and 16)")
    ap.add_argument("--size-mib", type=int, default=1024, help="big file for cp/cat/first byte/kill")
    ap.add_argument("--rss-size-mib", type=int, default=4096, help="file copied to measure memory (0: skip)")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (medians)")
    ap.add_argument("--stall-runs", type=int, default=None, help="node-kill runs (0: skip) [default: --runs]")
    ap.add_argument("--files", type=int, default=1000, help="small files per run")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--only", default="default,parity0,noenc", help="configurations, comma-separated")
    ap.add_argument("--tables", default="issue7,issue16",
                    help="tables to measure, comma-separated: issue7 (the configurations of "
                         "--only, memory, the node kill), issue16 (against tmpfs and the peers)")
    issue16.add_args(ap)
    ap.add_argument("--peers", action="store_true",
                    help="issue 16's table also on sshfs, GlusterFS (disperse 2+1 and distributed) "
                         "and bindfs, on loopback; installs their Debian packages and purges them after")
    ap.add_argument("--scale", default=None, metavar="N,N,...",
                    help="instead: fill one mount to each count of 4 KiB files and report memory, "
                         "mount time and create/stat/unlink rates (e.g. 10000,100000,1000000)")
    ap.add_argument("--bin", default="target/release/poolfs")
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument("--namespace-cost", action="store_true",
                    help="measure what keeping the namespace in the pool costs (issue 15) instead")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 16 MiB files, 64 MiB for memory, 100 small files, 1 run, "
                         "small issue-16 rows, no targets enforced")
    a = ap.parse_args(argv)
    if a.quick:
        a.size_mib, a.rss_size_mib, a.files, a.runs = 16, 64, 100, 1
        issue16.quick(a)
    if a.stall_runs is None:
        a.stall_runs = a.runs
    a.only = [n.strip() for n in a.only.split(",") if n.strip()]
    bad = [n for n in a.only if n not in CONFIGS]
    if bad:
        ap.error(f"unknown configuration {bad}: choose from {','.join(CONFIGS)}")
    a.tables = [n.strip() for n in a.tables.split(",") if n.strip()]
    bad = [n for n in a.tables if n not in ("issue7", "issue16")]
    if bad:
        ap.error(f"unknown table {bad}: choose from issue7,issue16")
    if a.peers and "issue16" not in a.tables:
        ap.error("--peers measures the issue16 table: add it to --tables")
    if a.scale is not None:
        try:
            a.scale = sorted({int(n) for n in a.scale.split(",") if n.strip()})
        except ValueError:
            ap.error(f"--scale wants counts such as 10000,100000: {a.scale!r}")
        if not a.scale or a.scale[0] < 1:
            ap.error("--scale wants positive counts")
    return a


def issue16_table(a, pools, src, tmpfs, work, out):
    """Issue 16's rows on tmpfs, a pool (in a network namespace of its own, so its
    loopback bytes can be counted) and, with --peers, the peers; the report text, and
    the figures into `out`."""
    # Without network namespaces here (no unshare, no CAP_SYS_ADMIN), no wire figure.
    netns = bool(shutil.which("unshare")) and subprocess.run(
        ["unshare", "-n", "true"], stderr=subprocess.DEVNULL).returncode == 0
    if not netns:
        issue16.log_stderr("bench: cannot make a network namespace: bytes on the wire not measured")
    mnt, data, state = pools.up(3, ["--redundancy", f"{issue16.K}+{issue16.M}"], netns=netns)
    mount_log = os.path.join(os.path.dirname(Pools.state_file(data)), "mount.log")
    targets = [issue16.Target("tmpfs", "tmpfs", tmpfs),
               issue16.Target("poolfs", "**poolfs**", mnt,
                              netns_pid=state["pids"][0] if netns else None, log_path=mount_log)]
    with contextlib.ExitStack() as stack:
        notes = []
        if a.peers:
            sys_peers = stack.enter_context(peers.Peers(work, issue16.log_stderr))
            targets[1:1] = sys_peers.targets
            notes = sys_peers.notes
        issue16.measure(targets, a, src, issue16.log_stderr)
    text, meds = issue16.table(targets, a)
    out["issue16"] = {"medians": meds, "runs": {t.name: t.figs for t in targets},
                      "wrong": {t.name: t.wrong for t in targets},
                      "errors": {t.name: t.errors for t in targets}, "notes": notes}
    text = "\n".join([issue16.header(a), "", text] + [f"- {n}" for n in notes])
    # a wrong byte anywhere, or an error on poolfs, fails the bench
    return text, any(t.wrong for t in targets) or bool(targets[-1].errors)


def main(argv=None):
    a = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("bench: needs root (tmpfs mounts, dropping the page cache, FUSE)")
    binary = os.path.abspath(a.bin)
    if not os.access(binary, os.X_OK):
        sys.exit(f"bench: no poolfs binary at {binary} (cargo build --release)")
    # Both, explicitly: a shell that starts a job in the background starts it with
    # SIGINT ignored, and Python then leaves Ctrl-C ignored too.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    work = tempfile.mkdtemp(prefix="poolfs-bench-")
    print(f"bench: working in {work}", file=sys.stderr)
    src_dir, tmpfs = os.path.join(work, "src"), os.path.join(work, "tmpfs")
    mounted, pools = [], Pools(binary, work)
    failed = False
    try:
        if a.scale:
            meta = meta_info(binary)
            res = scale.run(a, pools, issue16.log_stderr)
            print(scale.report(a, res, meta))
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"meta": meta, "args": vars(a), "scale": res}, f, indent=1)
            return 0
        if a.namespace_cost:
            os.makedirs(src_dir)
            sh("mount", "-t", "tmpfs", "-o", f"size={a.size_mib + 64}m", "tmpfs", src_dir)
            mounted.append(src_dir)
            src = os.path.join(src_dir, "src")
            write_random(src, a.size_mib)
            meta = meta_info(binary)
            res, runs = namespace_cost(a, pools, binary, src)
            print(namespace_report(a, res, meta))
            if a.json:
                with open(a.json, "w") as f:
                    json.dump({"meta": meta, "args": vars(a), "namespace": res,
                               "namespace_runs": runs}, f, indent=1)
            return 0
        # tmpfs holds the big file, the random-write file, the tree and the small files
        tmpfs_mib = a.size_mib + 64 + (a.randw_mib + a.tree_files * 4 // 1024 + 256
                                       if "issue16" in a.tables else 0)
        for d, mib in ((src_dir, a.size_mib + a.rss_size_mib + 64), (tmpfs, tmpfs_mib)):
            os.makedirs(d)
            sh("mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", d)
            mounted.append(d)
        src = os.path.join(src_dir, "src")
        write_random(src, a.size_mib)
        meta = meta_info(binary)  # before the runs: the commit measured
        out = {"meta": meta, "args": vars(a)}
        texts = []
        if "issue7" in a.tables:
            rss_src = None
            if a.rss_size_mib:
                rss_src = os.path.join(src_dir, "rss")
                write_random(rss_src, a.rss_size_mib)
            base = {"dir": tmpfs, "cp": [], "cat": [], "ttfb": [], "small": []}
            results = {n: measure_config(n, a, pools, binary, src, rss_src, base) for n in a.only}
            if rss_src:
                os.unlink(rss_src)
            base = {k: med(v) for k, v in base.items() if k != "dir"}
            floor = disk_floor(work, a.runs)
            texts.append(report(a, base, results, meta, floor))
            out.update({"tmpfs": base, "poolfs": results, "disk": floor})
        if "issue16" in a.tables:
            text, failed = issue16_table(a, pools, src, tmpfs, work, out)
            if "issue7" not in a.tables:
                text = f"poolfs benchmark, commit {meta['commit']}, {meta['machine']}\n\n{text}"
            texts.append(text)
        print("\n\n".join(texts))
        if a.json:
            with open(a.json, "w") as f:
                json.dump(out, f, indent=1)
        if failed:
            print("bench: wrong bytes, or poolfs failed a step (see the table)", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        print("bench: interrupted, cleaning up", file=sys.stderr)
        return 130
    finally:
        with deferred_signals():
            pools.close()
            for m in reversed(mounted):
                if subprocess.run(["umount", m], stderr=subprocess.DEVNULL).returncode != 0:
                    subprocess.run(["umount", "-l", m])
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
