"""Helpers every bench module shares: running commands, dropping the page cache,
medians and number formats, pools started with `poolfs up` (optionally in a network
namespace of their own, so their loopback traffic can be counted), and deferring
Ctrl-C while a cleanup step runs."""
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

MIB = 1 << 20


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def proc_status(pid, field):
    """A field of /proc/PID/status in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def is_ours(pid, binary):
    """Is `pid` still a process of our poolfs binary (guards against recycled pids)?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            exe = f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return False
    return exe == binary or os.path.basename(exe) == "poolfs"


class Pools:
    """Pools started with `poolfs up`, each in a data dir of its own; all stopped by `close`."""

    def __init__(self, binary, work):
        self.binary, self.work, self.live, self.count = binary, work, [], 0

    def up(self, nodes, extra, netns=False):
        """Starts a pool; returns (mount point, data dir, up.json). `netns`: in a network
        namespace of its own (`unshare -n`, loopback only), so that `lo_bytes` of its
        mount pid counts the pool's traffic and nothing else on this machine."""
        self.count += 1
        mnt = os.path.join(self.work, f"pool{self.count}")
        data = os.path.join(self.work, f"pool{self.count}.data")
        self.live.append((mnt, data))
        cmd = [self.binary, "up", mnt, "--nodes", str(nodes), "--data-dir", data, *extra]
        if netns:
            cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *cmd]
        with deferred_signals():  # a half-started pool could not be stopped by `down`
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, start_new_session=True)
        with open(self.state_file(data)) as f:
            return mnt, data, json.load(f)

    def remount(self, mnt, data, nodes, extra):
        """`poolfs down` then `poolfs up` of the same data dir (the same pool, its files
        kept); returns the `time.perf_counter()` at which `up` was started (the caller
        stops the clock once a stat in the mount answers) and the new up.json."""
        with deferred_signals():
            subprocess.run([self.binary, "down", mnt, "--data-dir", data], check=True,
                           stdout=subprocess.DEVNULL, start_new_session=True)
            t = time.perf_counter()
            subprocess.run([self.binary, "up", mnt, "--nodes", str(nodes), "--data-dir", data,
                            *extra], check=True, stdout=subprocess.DEVNULL, start_new_session=True)
        with open(self.state_file(data)) as f:
            return t, json.load(f)

    @staticmethod
    def state_file(data):
        up = os.path.join(data, "up")
        for d in os.listdir(up):
            p = os.path.join(up, d, "up.json")
            if os.path.exists(p):
                return p
        raise RuntimeError(f"no up.json under {up}")

    def down(self, mnt, data):
        with deferred_signals():
            if subprocess.run([self.binary, "down", mnt, "--data-dir", data],
                              stdout=subprocess.DEVNULL, start_new_session=True).returncode != 0:
                self.force_down(mnt, data)
            self.live.remove((mnt, data))
            shutil.rmtree(data, ignore_errors=True)

    def force_down(self, mnt, data):
        """`down` failed: lazy unmount and stop the recorded pids that are still ours."""
        print(f"bench: `poolfs down {mnt}` failed, unmounting lazily and stopping its pids",
              file=sys.stderr)
        subprocess.run(["fusermount3", "-u", "-z", mnt], stderr=subprocess.DEVNULL)
        try:
            with open(self.state_file(data)) as f:
                pids = json.load(f)["pids"]
        except (OSError, RuntimeError, ValueError, KeyError):
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                if is_ours(pid, self.binary):
                    os.kill(pid, sig)
            deadline = time.time() + 5
            while any(is_ours(p, self.binary) for p in pids) and time.time() < deadline:
                time.sleep(0.05)

    def close(self):
        for mnt, data in list(self.live):
            self.down(mnt, data)


_deferring = []


@contextlib.contextmanager
def deferred_signals():
    """Holds Ctrl-C / SIGTERM until the outermost such block ends, then raises
    KeyboardInterrupt (so a cleanup step is never cut in half)."""
    if _deferring:
        yield
        return
    got = []
    _deferring.append(got)
    old = {s: signal.signal(s, lambda n, _f: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _deferring.pop()
        if got:
            raise KeyboardInterrupt


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, ratio=None, none="n/a"):
    if v is None:
        return none
    s = f"{v:.2f}" if v < 100 else f"{v:.0f}"
    return s if ratio is None else f"{s} ({ratio:.3f}x)"




def lo_bytes(pid):
    """Bytes received on the loopback interface of the network namespace of `pid` (each
    packet on `lo` is received once, so this is the traffic between its processes)."""
    with open(f"/proc/{pid}/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    raise RuntimeError(f"no loopback interface in /proc/{pid}/net/dev")


def worker_init():
    """In a worker process: the default signal handlers back (the bench's own raise
    KeyboardInterrupt, which a pool's workers would print as they are stopped)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
