#!/usr/bin/env python3
"""poolfs churn run (issue 14): files stay readable while machines come and go.

usage: python3 bench/churn.py [--minutes 10] [--nodes 10] [--tolerate F] [--max-off F]
                              [--repair-grace 10] [--reclaim-after 5] [--seed S]
                              [--settle-seconds 240] [--bin target/release/poolfs]
                              [--json FILE]

Needs root and fuse3 (it mounts). Starts a loopback pool with `poolfs up` and, for
the given minutes, stops (SIGSTOP, later SIGCONT) or kills (SIGKILL, later restarted
with its own command line: same storage, same port, so the same id) storage members
at random, never more than F at once (F: --max-off, else --tolerate, else 2, which
the default shape of a 10-node pool, 4+4, survives twice over). Meanwhile one
process writes, overwrites (in place, truncated, or replaced by rename) and deletes
files, and another reads them back and checks every byte against what the writer
last wrote (a lock file per name outside the mount keeps the two from crossing).

When the time is up every member comes back, the writer and reader stop, every file
is read once more, and the run waits until every file is healthy and the sweep has
reclaimed what no file names. It reports:

- wrong bytes read (must be 0), EIO (must be 0), any other error (must be none);
- leaked bytes: what the mount's segments take on the members' disks (allocated
  blocks) beyond what the live files need at full redundancy (each of the k + m
  segments holds a sealed shard per stripe, in whole 4 KiB blocks). Must be 0 beyond
  a slack of one 4 KiB block per stored shard: a stripe rewritten into its other
  slot lives in the shadow segment, and the block where its slot meets a neighbour's
  is then allocated in both files;
- the worst read() stall (ms) and the bytes written by repair (`user.poolfs.repair`).

Exit status 0 when every must holds, 1 if not. Everything it starts (the pool, the
members it restarted, its temp dir) is stopped and removed at the end, also on failure
or Ctrl-C.
"""
import argparse
import errno
import fcntl
import json
import multiprocessing
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import Pools, deferred_signals, interrupted, is_ours  # noqa: E402

MIB = 1 << 20
BLOCK = 4096
SHARD_SIZE = 1 << 20  # poolfs::client::DEFAULT_SHARD_SIZE
SEAL_CHUNK = 32 * 1024  # poolfs::client::layout::SEAL_CHUNK
TAG_LEN = 16  # poolfs::client::layout::TAG_LEN
READ_CHUNK = 128 * 1024


# ---------------------------------------------------------------- what files need

def sealed_len(n):
    """client/layout.rs sealed_len: the shard, then one tag per 32 KiB chunk."""
    return n + TAG_LEN * -(-n // SEAL_CHUNK)


def need_bytes(size, k, m):
    """Allocated bytes of a file's k + m segments at full redundancy (as
    tests/it/harness/faults.rs need_bytes): stripe j's shard sealed at slot offset
    j * sealed_len(SHARD_SIZE), blocks shared by neighbouring slots counted once."""
    stripe = k * SHARD_SIZE
    blocks, last = 0, None
    for j in range(-(-size // stripe)):
        data = min(stripe, size - j * stripe)
        per = -(-data // k)
        shard = min(per + (per & 1), SHARD_SIZE)
        start = j * sealed_len(SHARD_SIZE)
        first, end = start // BLOCK, -(-(start + sealed_len(shard)) // BLOCK)
        blocks += max(0, end - (last + 1 if last is not None and last >= first else first))
        last = end - 1
    return (k + m) * blocks * BLOCK


def shape_of(health):
    """(k, m) from a health text, None for a file with no shards in the pool."""
    got = re.search(r"k=(\d+), m=(\d+)", health)
    return (int(got.group(1)), int(got.group(2))) if got else None


def stripes(size, k):
    return -(-size // (k * SHARD_SIZE))


def allocated(path):
    """Allocated bytes of every file under `path`."""
    total = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.lstat(os.path.join(root, n)).st_blocks * 512
            except FileNotFoundError:
                pass  # reclaimed while we walked
    return total


def data_allocated(segments):
    """Allocated bytes of the file data under a node's `segments` directory: every
    owner's but a namespace's (the copy of a mount's namespace kept in the pool, whose
    owner directory holds its `namespace-root`; it is counted by the mount's status,
    not as leaked file data)."""
    total = 0
    try:
        owners = os.listdir(segments)
    except FileNotFoundError:
        return 0
    for owner in owners:
        path = os.path.join(segments, owner)
        if os.path.isdir(os.path.join(path, "namespace-root")):
            continue
        total += allocated(path)
    return total


# ---------------------------------------------------------------- members

def cmdline(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0") if a]


def listen_port(pid):
    """The TCP port `pid` listens on: its socket inodes among the listening sockets."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and cols[9] in inodes:
                    return int(cols[1].rsplit(":", 1)[1], 16)
    raise RuntimeError(f"pid {pid} listens on no TCP port")


def arg_after(args, flag):
    return args[args.index(flag) + 1]


class Member:
    """A storage member of the pool: stopped and continued, or killed and restarted
    with its own command line on its own port."""

    def __init__(self, index, pid, binary):
        self.index, self.pid, self.binary = index, pid, binary
        self.args = cmdline(pid)
        # `up` starts members on port 0: the same port again keeps their address.
        self.args[self.args.index("--listen") + 1] = f"127.0.0.1:{listen_port(pid)}"
        self.storage = arg_after(self.args, "--storage")
        self.child = None  # a restarted member is our child
        self.off = None  # None, "stopped" or "killed"
        self.back_at = 0.0

    def stop(self):
        os.kill(self.pid, signal.SIGSTOP)
        self.off = "stopped"

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)
        if self.child:
            self.child.wait()
            self.child = None
        deadline = time.time() + 10
        while is_ours(self.pid, self.binary) and time.time() < deadline:
            time.sleep(0.02)
        self.off = "killed"

    def bring_back(self):
        if self.off == "stopped":
            os.kill(self.pid, signal.SIGCONT)
        elif self.off == "killed":
            self.restart()
        self.off = None

    def restart(self):
        last = ""
        for _ in range(20):  # the port may be held a moment by the dead socket
            with open(self.storage + ".log", "ab") as log:
                child = subprocess.Popen(
                    self.args, env={**os.environ, "POOLFS_NOTIFY_READY": "1", "RUST_LOG": "info"},
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                    start_new_session=True)
            ready, _, _ = select.select([child.stdout], [], [], 15)
            last = child.stdout.readline().decode(errors="replace").strip() if ready else "silent"
            if last == "READY":
                child.stdout.close()
                self.child, self.pid = child, child.pid
                return
            child.kill()
            child.wait()
            time.sleep(0.25)
        raise RuntimeError(f"member {self.index} did not start again: {last}")

    def end(self):
        """Ends a member this run restarted (the pool's `down` knows only the originals)."""
        if self.child and self.child.poll() is None:
            self.child.terminate()
            try:
                self.child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()


# ---------------------------------------------------------------- writer and reader

def content(name, version, size):
    """What the writer puts in `name` at `version`: reproducible from the two."""
    return random.Random(f"{name}:{version}").randbytes(size)


def pick_size(rng):
    r = rng.random()
    if r < 0.3:
        return rng.randint(100, 4096)  # kept in the mount's metadata
    if r < 0.7:
        return rng.randint(16 * 1024, MIB)
    return rng.randint(MIB, 12 * MIB)


class Shared:
    """What writer and reader share outside the mount: per file a lock and a journal
    entry ("version size") the writer updates while it holds the lock."""

    def __init__(self, work):
        self.locks, self.journal = os.path.join(work, "locks"), os.path.join(work, "journal")
        os.makedirs(self.locks, exist_ok=True)
        os.makedirs(self.journal, exist_ok=True)

    def lock(self, name, exclusive):
        fd = os.open(os.path.join(self.locks, name), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        return fd

    def get(self, name):
        try:
            with open(os.path.join(self.journal, name)) as f:
                v, s = f.read().split()
                return int(v), int(s)
        except (FileNotFoundError, ValueError):
            return None

    def set(self, name, version, size):
        p = os.path.join(self.journal, name)
        with open(p + ".new", "w") as f:
            f.write(f"{version} {size}")
        os.rename(p + ".new", p)

    def forget(self, name):
        try:
            os.unlink(os.path.join(self.journal, name))
        except FileNotFoundError:
            pass

    def names(self):
        return [n for n in os.listdir(self.journal) if not n.endswith(".new")]


class Errors:
    def __init__(self):
        self.eio, self.other = 0, {}

    def add(self, what, e):
        if isinstance(e, OSError) and e.errno == errno.EIO:
            self.eio += 1
        key = f"{what}: {errno.errorcode.get(getattr(e, 'errno', None), type(e).__name__)}"
        self.other[key] = self.other.get(key, 0) + 1
        print(f"churn: {what}: {e}", file=sys.stderr)


def write_file(path, data, trunc=True):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if trunc else 0), 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[:MIB]):]
    finally:
        os.close(fd)  # a failed close (stored nothing) raises here


def writer_main(mnt, work, seed, stop, out):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rng, shared, errors = random.Random(seed), Shared(work), Errors()
    ops = {"create": 0, "overwrite": 0, "truncate": 0, "replace": 0, "delete": 0}
    written, serial = 0, 0
    while not stop.is_set():
        names = shared.names()
        op = "create" if len(names) < 6 else rng.choice(
            ["create", "overwrite", "truncate", "replace", "delete"] if len(names) < 24
            else ["overwrite", "truncate", "replace", "delete", "delete"])
        if op == "create":
            serial += 1
            name = f"f{seed % 1000}-{serial}"
        else:
            name = rng.choice(names)
        fd = shared.lock(name, True)
        try:
            have = shared.get(name)
            if op != "create" and have is None:
                continue  # forgotten after a failure
            version = (have[0] if have else 0) + 1
            path = os.path.join(mnt, name)
            try:
                if op == "delete":
                    os.unlink(path)
                    shared.forget(name)
                else:
                    size = have[1] if op == "overwrite" else pick_size(rng)
                    data = content(name, version, size)
                    if op == "replace":
                        tmp = os.path.join(mnt, f".tmp-{name}")
                        write_file(tmp, data)
                        os.rename(tmp, path)
                    else:
                        write_file(path, data, trunc=op != "overwrite")
                    shared.set(name, version, size)
                    written += size
                ops[op] += 1
            except OSError as e:
                errors.add(f"{op} {name}", e)
                shared.forget(name)  # its bytes are unknown now: never checked again
        finally:
            os.close(fd)
        time.sleep(rng.uniform(0, 0.2))
    json.dump({"ops": ops, "bytes_written": written, "eio": errors.eio,
               "errors": errors.other}, open(out, "w"))


def verify(mnt, shared, name, errors, stats):
    """Reads `name` whole (its cached pages dropped first) under its lock and compares
    every byte with what the writer last wrote; returns False if it was not known."""
    fd = shared.lock(name, False)
    try:
        have = shared.get(name)
        if have is None:
            return False
        version, size = have
        want = content(name, version, size)
        got = bytearray()
        try:
            f = os.open(os.path.join(mnt, name), os.O_RDONLY)
            try:
                os.posix_fadvise(f, 0, 0, os.POSIX_FADV_DONTNEED)
                while True:
                    t = time.perf_counter()
                    buf = os.read(f, READ_CHUNK)
                    stats["worst_read_ms"] = max(stats["worst_read_ms"],
                                                 (time.perf_counter() - t) * 1000)
                    if not buf:
                        break
                    got += buf
            finally:
                os.close(f)
        except OSError as e:
            errors.add(f"read {name}", e)
            return True
        stats["files_verified"] += 1
        stats["bytes_verified"] += len(got)
        if got != want:
            n = min(len(got), len(want))
            wrong = sum(1 for a, b in zip(got[:n], want[:n]) if a != b) + abs(len(got) - len(want))
            stats["wrong_bytes"] += wrong
            print(f"churn: {name} v{version}: {wrong} wrong bytes", file=sys.stderr)
        return True
    finally:
        os.close(fd)


def reader_main(mnt, work, seed, stop, out):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rng, shared, errors = random.Random(seed), Shared(work), Errors()
    stats = {"files_verified": 0, "bytes_verified": 0, "wrong_bytes": 0, "worst_read_ms": 0.0}
    while not stop.is_set():
        names = shared.names()
        if not names or not verify(mnt, shared, rng.choice(names), errors, stats):
            time.sleep(0.05)
    json.dump({**stats, "eio": errors.eio, "errors": errors.other}, open(out, "w"))


# ---------------------------------------------------------------- the run

def status_nodes(binary, state):
    out = subprocess.run([binary, "status", "--json", "-c", state["controller"], "--key", state["key"]],
                         capture_output=True, text=True, check=True).stdout
    view = json.loads(out)
    return view.get("nodes") or view.get("view", {}).get("nodes", [])


def wait_all_up(binary, state, count, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if sum(1 for n in status_nodes(binary, state) if n.get("state") == "Up") >= count:
                return True
        except (subprocess.CalledProcessError, ValueError):
            pass
        time.sleep(0.5)
    return False


def space(mnt, storages):
    """(held, need, slack, unhealthy files) of the mount's files right now."""
    need = slack = 0
    unhealthy = []
    for root, _dirs, names in os.walk(mnt):
        for n in names:
            p = os.path.join(root, n)
            try:
                size = os.stat(p).st_size
                health = os.getxattr(p, "user.poolfs.health").decode()
            except OSError as e:
                unhealthy.append(f"{n}: {e}")
                continue
            if not health.startswith("healthy"):
                unhealthy.append(f"{n}: {health}")
            shape = shape_of(health)
            if shape:
                need += need_bytes(size, *shape)
                slack += sum(shape) * stripes(size, shape[0]) * BLOCK
    held = sum(data_allocated(os.path.join(s, "segments")) for s in storages)
    return held, need, slack, unhealthy


def repair_bytes(mnt):
    try:
        text = os.getxattr(mnt, "user.poolfs.repair").decode()
    except OSError:
        return None
    got = re.search(r"(\d+) bytes written by repair", text)
    return int(got.group(1)) if got else None


def churn(a, members, end, rng, log):
    """Stops and kills members at random until `end`, never more than a.max_off at once."""
    events = {"stopped": 0, "killed": 0, "continued": 0, "restarted": 0}
    most = 0
    while time.time() < end:
        time.sleep(rng.uniform(0.5, 3))
        now = time.time()
        for m in members:
            if m.off and m.back_at <= now:
                events["continued" if m.off == "stopped" else "restarted"] += 1
                log(f"member {m.index} back ({m.off})")
                m.bring_back()
        off = [m for m in members if m.off]
        if len(off) < a.max_off and rng.random() < 0.6:
            m = rng.choice([m for m in members if not m.off])
            # Some stay away past the grace, so repair runs and their old shards leak
            # unless reclaimed.
            m.back_at = now + rng.uniform(2, 2 * a.repair_grace + 5)
            if rng.random() < 0.5:
                m.stop()
                events["stopped"] += 1
            else:
                m.kill()
                events["killed"] += 1
            log(f"member {m.index} {m.off} for {m.back_at - now:.1f}s")
        most = max(most, sum(1 for m in members if m.off))
    for m in members:
        if m.off:
            events["continued" if m.off == "stopped" else "restarted"] += 1
            m.bring_back()
    return events, most


def run(a, binary, work, log):
    pools = Pools(binary, work)
    members = []
    extra = ["--repair-grace", str(a.repair_grace), "--reclaim-after", str(a.reclaim_after)]
    if a.tolerate is not None:
        extra += ["--tolerate", str(a.tolerate)]
    try:
        mnt, data, state = pools.up(a.nodes, extra)
        state_dir = os.path.dirname(Pools.state_file(data))
        members = [Member(i, pid, binary) for i, pid in enumerate(state["pids"][2:], start=1)]
        storages = [arg_after(cmdline(state["pids"][0]), "--storage")] + [m.storage for m in members]
        log(f"pool of {a.nodes} at {mnt} (state {state_dir}), at most {a.max_off} members off at once")
        shared_dir = os.path.join(work, "shared")
        Shared(shared_dir)
        stop = multiprocessing.Event()
        outs = {n: os.path.join(work, f"{n}.json") for n in ("writer", "reader")}
        procs = [multiprocessing.Process(target=writer_main, args=(mnt, shared_dir, a.seed, stop, outs["writer"])),
                 multiprocessing.Process(target=reader_main, args=(mnt, shared_dir, a.seed + 1, stop, outs["reader"]))]
        for p in procs:
            p.start()
        try:
            started = time.time()
            events, most = churn(a, members, started + a.minutes * 60, random.Random(a.seed + 2), log)
            log(f"churn over after {time.time() - started:.0f}s: {events}")
            all_up = wait_all_up(binary, state, a.nodes, 60)
        finally:
            stop.set()
            for p in procs:
                p.join(timeout=120)
                if p.is_alive():
                    p.kill()
                    p.join()
        w, r = (json.load(open(outs[n])) if os.path.exists(outs[n]) else None for n in ("writer", "reader"))
        if w is None or r is None:
            raise RuntimeError("the writer or the reader died without a report")
        # Every file once more, the pool whole again.
        shared, errors = Shared(shared_dir), Errors()
        final = {"files_verified": 0, "bytes_verified": 0, "wrong_bytes": 0, "worst_read_ms": 0.0}
        for name in shared.names():
            verify(mnt, shared, name, errors, final)
        # Then until every file is whole and the sweep has reclaimed the rest.
        settle_start = time.time()
        while True:
            held, need, slack, unhealthy = space(mnt, storages)
            if (not unhealthy and held <= need + slack) or time.time() - settle_start > a.settle_seconds:
                break
            time.sleep(1)
        res = {
            "minutes": a.minutes, "nodes": a.nodes, "max_off": a.max_off, "max_off_seen": most,
            "seed": a.seed, "events": events, "members_all_up_after": all_up,
            "writer": w, "reader": r, "final_pass": {**final, "eio": errors.eio, "errors": errors.other},
            "wrong_bytes": r["wrong_bytes"] + final["wrong_bytes"],
            "eio": w["eio"] + r["eio"] + errors.eio,
            "other_errors": sum(w["errors"].values()) + sum(r["errors"].values())
            + sum(errors.other.values()) - (w["eio"] + r["eio"] + errors.eio),
            "files_verified": r["files_verified"] + final["files_verified"],
            "worst_read_stall_ms": max(r["worst_read_ms"], final["worst_read_ms"]),
            "repair_bytes": repair_bytes(mnt),
            "held_bytes": held, "need_bytes": need, "slack_bytes": slack,
            "leaked_bytes": max(0, held - need), "unhealthy_files": unhealthy,
            "settle_seconds": round(time.time() - settle_start, 1),
        }
        res["pass"] = (res["wrong_bytes"] == 0 and res["eio"] == 0 and res["other_errors"] == 0
                       and res["leaked_bytes"] <= slack and not unhealthy and all_up
                       and res["files_verified"] > 0)
        return res
    finally:
        with deferred_signals():
            for m in members:  # a stopped member would hold up the unmount's hand-off
                if m.off == "stopped":
                    os.kill(m.pid, signal.SIGCONT)
                    m.off = None
            try:
                pools.close()
            finally:
                for m in members:
                    m.end()


def report(res):
    lines = [f"poolfs churn run: {res['nodes']} nodes, {res['minutes']} min, at most "
             f"{res['max_off']} members off at once (seen {res['max_off_seen']}), seed {res['seed']}",
             f"events: {res['events']}",
             f"writer: {res['writer']['ops']}, {res['writer']['bytes_written'] / MIB:.1f} MiB written",
             f"files verified: {res['files_verified']}",
             "",
             "| what | value | must |", "| --- | ---: | --- |",
             f"| wrong bytes read | {res['wrong_bytes']} | 0 |",
             f"| EIO | {res['eio']} | 0 |",
             f"| other errors | {res['other_errors']} | 0 |",
             f"| leaked bytes after the sweep | {res['leaked_bytes']} | <= {res['slack_bytes']} "
             f"(one 4 KiB block per shard) |",
             f"| files not healthy at the end | {len(res['unhealthy_files'])} | 0 |",
             f"| worst read() stall (ms) | {res['worst_read_stall_ms']:.1f} | reported |",
             f"| bytes written by repair | {res['repair_bytes']} | reported |",
             "",
             f"held {res['held_bytes']} bytes for {res['need_bytes']} needed, "
             f"settled in {res['settle_seconds']}s",
             f"result: {'pass' if res['pass'] else 'FAIL'}"]
    for f in res["unhealthy_files"][:20]:
        lines.append(f"  not healthy: {f}")
    for part in ("writer", "reader", "final_pass"):
        for e, n in res[part]["errors"].items():
            lines.append(f"  {part} error x{n}: {e}")
    return "\n".join(lines)


def parse_args(argv):
    ap = argparse.ArgumentParser(description="poolfs churn run (issue 14)")
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--tolerate", type=int, help="passed to `up`; also the default --max-off")
    ap.add_argument("--max-off", type=int, help="most members off at once [default: --tolerate, else 2]")
    ap.add_argument("--repair-grace", type=int, default=10, help="seconds, passed to `up`")
    ap.add_argument("--reclaim-after", type=int, default=5, help="seconds, passed to `up`")
    ap.add_argument("--settle-seconds", type=int, default=240,
                    help="most seconds to wait, after the churn, for every file healthy and the sweep")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--bin", default="target/release/poolfs")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)
    if a.max_off is None:
        a.max_off = a.tolerate if a.tolerate is not None else 2
    if a.seed is None:
        a.seed = random.SystemRandom().randrange(1 << 30)
    if not 0 < a.max_off < a.nodes - 1:
        ap.error("--max-off must leave the mount and one member up")
    return a


def main(argv=None):
    a = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("churn: needs root (FUSE mounts)")
    binary = os.path.abspath(a.bin)
    if not os.access(binary, os.X_OK):
        sys.exit(f"churn: no poolfs binary at {binary} (cargo build --release)")
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    work = tempfile.mkdtemp(prefix="poolfs-churn-")
    started = time.time()

    def log(msg):
        print(f"churn [{time.time() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    log(f"working in {work}, seed {a.seed}")
    try:
        res = run(a, binary, work, log)
    except KeyboardInterrupt:
        print("churn: interrupted, cleaning up", file=sys.stderr)
        return 130
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:
        print(f"churn: the run failed: {e}", file=sys.stderr)
        return 1
    finally:
        with deferred_signals():
            shutil.rmtree(work, ignore_errors=True)
    print(report(res))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
