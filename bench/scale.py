"""`--scale N,N,...` (issue 16, item 4): how the mount's costs grow with the number of
files. One 3-node pool (k=2, m=1, encrypted, storage on disk) is filled with 4 KiB
files, in directories of 1000, up to each count in turn (by several processes, through
the mount); at each count it reports the mount's memory (VmRSS and VmHWM), the create,
stat and unlink rates of 1000 more files, and the time to mount the same storage again
(`poolfs down`, then `poolfs up` until a stat in the mount answers), and says per
column whether the figure stays flat against the first count."""
import glob
import os
import shutil
import subprocess
import tempfile
import time
from multiprocessing import Pool as Workers

from common import MIB, drop_caches, fmt, proc_status, sh, worker_init

PER_DIR = 1000
EXTRA = 1000  # files of the rate measurements at each count
GROWS = 1.5  # a figure this much worse than the first row's "grows"
WORKERS = 4
EXTRA_ARGS = ["--redundancy", "2+1"]

# key, label, better: "lo" (memory, time) or "hi" (rates)
COLUMNS = [
    ("rss", "mount VmRSS (MiB)", "lo"),
    ("hwm", "mount VmHWM (MiB)", "lo"),
    ("mount", "mount time (s)", "lo"),
    ("rss_after", "VmRSS after remount + stat (MiB)", "lo"),
    ("create", "creates/s (1000 × 4 KiB, then sync)", "hi"),
    ("stat", "stats/s (cold)", "hi"),
    ("unlink", "unlinks/s", "hi"),
]


def _fill_dir(d):
    buf = os.urandom(4096)
    os.makedirs(d, exist_ok=True)
    for i in range(PER_DIR):
        fd = os.open(os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, buf)
        finally:
            os.close(fd)
    return PER_DIR


def fill(mnt, have, want, log):
    """Fills directories d{have/1000}.. up to `want` files (multiples of 1000)."""
    jobs = [os.path.join(mnt, f"d{j}") for j in range(have // PER_DIR, want // PER_DIR)]
    done, t, last = have, time.perf_counter(), time.perf_counter()
    with Workers(WORKERS, initializer=worker_init) as w:
        for n in w.imap_unordered(_fill_dir, jobs):
            done += n
            if time.perf_counter() - last > 10 or done == want:
                last = time.perf_counter()
                log(f"  scale: {done} files ({(done - have) / (last - t):.0f} files/s)")
    return (want - have) / (time.perf_counter() - t) if want > have else None


def rates(mnt, tag):
    d = os.path.join(mnt, f"extra-{tag}")
    os.makedirs(d)
    buf = os.urandom(4096)
    names = [os.path.join(d, f"f{i}") for i in range(EXTRA)]
    t = time.perf_counter()
    for p in names:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, buf)
        finally:
            os.close(fd)
    sh("sync", "-f", d)
    create = EXTRA / (time.perf_counter() - t)
    drop_caches()
    t = time.perf_counter()
    for p in names:
        os.stat(p)
    stat = EXTRA / (time.perf_counter() - t)
    t = time.perf_counter()
    for p in names:
        os.unlink(p)
    unlink = EXTRA / (time.perf_counter() - t)
    os.rmdir(d)
    return {"create": create, "stat": stat, "unlink": unlink}


def log_tail(data, lines=5):
    """The last lines of the mount's log under the pool's data dir, and where every log
    of the pool was copied: the data dir itself is removed at the end."""
    out = []
    keep = tempfile.mkdtemp(prefix="poolfs-scale-logs-")
    for p in glob.glob(os.path.join(data, "up", "*", "*.log")):
        shutil.copy(p, keep)
        if p.endswith("mount.log"):
            with open(p, errors="replace") as f:
                out += [line.rstrip() for line in f.readlines()[-lines:]]
    return (" / ".join(out) or "no mount log") + f" (the pool's logs are kept in {keep})"


def run(a, pools, log):
    """Rows, one per count of `a.scale`."""
    counts = [-(-n // PER_DIR) * PER_DIR for n in a.scale]  # whole directories
    mnt, data, state = pools.up(3, EXTRA_ARGS)
    rows, have = [], 0
    for n in counts:
        log(f"  scale: filling to {n} files")
        fill_rate = fill(mnt, have, n, log)
        have = n
        pid = state["pids"][0]
        row = {"files": n, "fill": fill_rate, "rss": proc_status(pid, "VmRSS") / MIB,
               "hwm": proc_status(pid, "VmHWM") / MIB}
        row.update(rates(mnt, n))
        log(f"  scale: {n} files: " + ", ".join(f"{k} {fmt(v)}" for k, v in row.items()))
        try:
            t, state = pools.remount(mnt, data, 3, EXTRA_ARGS)
        except subprocess.CalledProcessError as e:
            # `up` gave up (its mount not ready in time) and stopped what it started.
            row["mount"], row["rss_after"] = None, None
            row["mount_error"] = f"`poolfs up` of the same storage failed ({e.returncode}): " + log_tail(data)
            log(f"  scale: {n} files: {row['mount_error']}")
            rows.append(row)
            break
        probe = os.path.join(mnt, "d0", "f0")
        while True:
            try:
                os.stat(probe)
                break
            except OSError:
                if time.perf_counter() - t > 600:
                    raise
                time.sleep(0.01)
        row["mount"] = time.perf_counter() - t
        row["rss_after"] = proc_status(state["pids"][0], "VmRSS") / MIB
        log(f"  scale: {n} files: mount {fmt(row['mount'])} s, VmRSS after {fmt(row['rss_after'])} MiB")
        rows.append(row)
    else:
        pools.down(mnt, data)
    return rows


def trend(first, v, better):
    if first is None or v is None or first == 0:
        return "-"
    worse = v / first if better == "lo" else first / v
    return "grows" if worse > GROWS else "flat"


def report(a, rows, meta):
    lines = [f"poolfs benchmark: cost by number of files, commit {meta['commit']}, {meta['machine']}",
             "3-node loopback pool (k=2, m=1, encrypted, storage on disk), 4 KiB files in "
             f"directories of {PER_DIR}, rates on {EXTRA} more files at each count; "
             f"'grows': more than {GROWS}x worse than the first row", "",
             "| files | " + " | ".join(label for _, label, _ in COLUMNS) + " | fill rate (files/s) |",
             "| ---: |" + " ---: |" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append(f"| {r['files']} | " + " | ".join(fmt(r[k], none="FAILED") for k, _, _ in COLUMNS)
                     + f" | {fmt(r['fill'])} |")
    if len(rows) > 1:
        first = rows[0]
        for r in rows[1:]:
            lines.append(f"| vs {first['files']}: {r['files']} | "
                         + " | ".join(trend(first[k], r[k], b) for k, _, b in COLUMNS) + " | |")
    for r in rows:
        if r.get("mount_error"):
            lines.append(f"\n{r['files']} files: {r['mount_error']}")
    return "\n".join(lines)
