"""Issue 16's table: small files, rm, the cold first byte (unbuffered and Python's
buffered read), random 4 KiB writes with the bytes they move on the wire, an fsx-style
run with mmap, stat of a 50 000-file tree, and cp / cold cat of the big file. Every
figure is taken on each system in turn (tmpfs, poolfs, the peers of `--peers`), the
order rotating every run, and the medians are compared with tmpfs's."""
import os
import random
import subprocess
import sys
import time
from multiprocessing import Pool as Workers

from common import MIB, drop_caches, fmt, lo_bytes, med, sh, timed, worker_init
from fsx import WrongBytes, fsx

K, M = 2, 1  # the pool's shape for this table (`--redundancy 2+1`)
WIRE_BOUND = (K + M) / K * 4096 + 64 * 1024  # bytes per 4 KiB write, issue 16's target

# key, label, unit, kind, target (kind "ratio": at least target × tmpfs; "max": at
# most target in unit; "info": no target), better ("hi" or "lo")
ROWS = [
    ("creates", "create + write + close of 4 KiB files, then sync", "files/s", "ratio", 0.10, "hi"),
    ("rm", "rm of those files", "files/s", "ratio", 0.07, "hi"),
    ("fb_raw", "first byte, cold, in process: os.open + unbuffered os.read(fd, 1)", "ms", "max", 1.0, "lo"),
    ("fb_buf", "first byte, cold, in process: Python's open(p, 'rb').read(1)", "ms", "max", 3.0, "lo"),
    ("randw", "random 4 KiB writes into a 256 MiB file, fsync every 64", "writes/s", "ratio", 0.03, "hi"),
    ("wire", "bytes on the wire per random 4 KiB write (fsyncs included)", "bytes", "max", WIRE_BOUND, "lo"),
    ("fsx", "fsx-style random ops with mmap on an 8 MiB file, every read checked", "ops/s", "ratio", 0.05, "hi"),
    ("stat", "stat of every file of a 50 000-file tree (find | xargs stat), cold", "files/s", "ratio", 0.20, "hi"),
    ("cp", "cp of the big file through close", "MiB/s", "ratio", 0.28, "hi"),
    ("cat", "cat of it, caches dropped", "MiB/s", "ratio", 0.19, "hi"),
]


class Target:
    """One system measured: a directory on it, and for a pool in a network namespace
    of its own the pid whose loopback counters are the pool's traffic."""

    def __init__(self, name, title, path, netns_pid=None, log_path=None):
        self.name, self.title, self.dir, self.netns_pid = name, title, path, netns_pid
        self.log_path = log_path  # a pool's mount log, quoted when a step fails
        self.figs = {key: [] for key, *_ in ROWS}
        self.wrong = []  # fsx failures, each a message
        self.errors = {}  # row key: messages of the runs that failed with an error

    def sub(self, *names):
        return os.path.join(self.dir, *names)


def log_tail(t, lines=8):
    """For a pool: the last lines of its mount's log (gone once the bench cleans up)."""
    if not t.log_path:
        return ""
    try:
        with open(t.log_path, errors="replace") as f:
            return "; mount log: " + " / ".join(line.rstrip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


def creates(d, count, bufs):
    """Files/s of `count` 4 KiB files created, written and closed in `d`, then `sync -f`."""
    os.makedirs(d)
    t = time.perf_counter()
    for i in range(count):
        fd = os.open(os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, bufs[i % len(bufs)])
        finally:
            os.close(fd)
    sh("sync", "-f", d)
    return count / (time.perf_counter() - t)


def removes(d, count):
    """Files/s of unlinking the `count` files `creates` made (and their directory)."""
    t = time.perf_counter()
    for i in range(count):
        os.unlink(os.path.join(d, f"f{i}"))
    os.rmdir(d)
    return count / (time.perf_counter() - t)


def first_byte_raw(path):
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
    return took * 1000


def first_byte_buffered(path):
    """Python's default: a BufferedReader whose buffer is st_blksize, so the first read
    asks the filesystem for that much."""
    drop_caches()
    t = time.perf_counter()
    with open(path, "rb") as f:
        got = f.read(1)
        took = time.perf_counter() - t
    if len(got) != 1:
        raise RuntimeError(f"{path}: no first byte")
    return took * 1000


def big_file(t, src, size_mib, tag):
    """The issue's procedure: cp (timed, through close), sync, drop caches, cat (timed),
    drop, head -c1, drop, then the first byte timed in this process, unbuffered and
    buffered (caches dropped before each)."""
    dst = t.sub(f"big-{tag}")
    t.figs["cp"].append(size_mib / timed(lambda: sh("cp", src, dst)))
    sh("sync")
    drop_caches()
    t.figs["cat"].append(size_mib / timed(lambda: sh("cat", dst, stdout=subprocess.DEVNULL)))
    drop_caches()
    sh("head", "-c1", dst, stdout=subprocess.DEVNULL)
    t.figs["fb_raw"].append(first_byte_raw(dst))
    t.figs["fb_buf"].append(first_byte_buffered(dst))
    os.unlink(dst)
    # The pool's nodes free the deleted file's segments after the next journal flush,
    # and for a while every fdatasync on their disks waits behind the extents being
    # freed: an fsync of the random-write row right after it took 0.7-1.2 s, not 3-8 ms
    # (bench/RESULTS.md). The next row measures writes, not that: let it settle first.
    time.sleep(SETTLE_SECS)


# Seconds the big file's delete is given to settle before the next row (see big_file).
SETTLE_SECS = 5


def fill(path, mib, src):
    """`mib` MiB of random bytes into `path`: the start of `src` (random, on tmpfs), then
    fresh random bytes if it is shorter (os.urandom is slow on a busy machine)."""
    with open(src, "rb") as s, open(path, "wb") as f:
        for _ in range(mib):
            f.write(s.read(MIB) or os.urandom(MIB))


def random_writes(t, path, size_mib, writes, every=64, seed=0):
    """Writes/s of `writes` 4 KiB writes at random 4 KiB-aligned offsets of the existing
    file `path`, an fsync after every `every` and at the end (their time included); and
    for a pool in a namespace of its own, the loopback bytes per write."""
    rng = random.Random(seed)
    bufs = [os.urandom(4096) for _ in range(64)]
    blocks = size_mib * MIB // 4096
    fd = os.open(path, os.O_RDWR)
    try:
        wire0 = lo_bytes(t.netns_pid) if t.netns_pid else None
        start = time.perf_counter()
        for i in range(writes):
            os.pwrite(fd, bufs[i % 64], rng.randrange(blocks) * 4096)
            if (i + 1) % every == 0:
                os.fsync(fd)
        os.fsync(fd)
        took = time.perf_counter() - start
        if wire0 is not None:
            t.figs["wire"].append((lo_bytes(t.netns_pid) - wire0) / writes)
    finally:
        os.close(fd)
    t.figs["randw"].append(writes / took)


def _make_files(job):
    d, count = job
    os.makedirs(d, exist_ok=True)
    for i in range(count):
        os.close(os.open(os.path.join(d, f"f{i}"), os.O_WRONLY | os.O_CREAT, 0o644))
    return count


def build_tree(root, count, per_dir=1000, workers=4):
    """`count` empty files in directories of `per_dir` under `root`, made by `workers`
    processes (not timed)."""
    jobs = [(os.path.join(root, f"d{i}"), min(per_dir, count - i * per_dir))
            for i in range((count + per_dir - 1) // per_dir)]
    os.makedirs(root)
    with Workers(workers, initializer=worker_init) as w:
        return sum(w.map(_make_files, jobs, chunksize=1))


def stat_tree(root, count):
    """Files/s of `find ROOT -type f | xargs stat > /dev/null`, caches dropped before."""
    drop_caches()
    took = timed(lambda: sh("sh", "-c", 'find "$0" -type f | xargs stat > /dev/null', root))
    return count / took


def setup(targets, a, src, log):
    """Per system, once: the 256 MiB file the random writes go into, and the tree."""
    for t in targets:
        log(f"  {t.name}: writing the {a.randw_mib} MiB file, building the {a.tree_files}-file tree")
        fill(t.sub("randw"), a.randw_mib, src)
        took = timed(lambda: build_tree(t.sub("tree"), a.tree_files))
        log(f"  {t.name}: tree built in {took:.0f} s")


def measure(targets, a, src, log):
    """Runs every row `a.runs` times on every target, interleaved; fills `t.figs`."""
    bufs = [os.urandom(4096) for _ in range(16)]
    setup(targets, a, src, log)
    def small(t, r):
        d = t.sub(f"small-{r}")
        t.figs["creates"].append(creates(d, a.files, bufs))
        t.figs["rm"].append(removes(d, a.files))

    def check(t, r):
        try:
            t.figs["fsx"].append(fsx(t.sub(f"fsx-{r}"), a.fsx_secs, seed=r))
        except WrongBytes as e:
            t.wrong.append(str(e))
            log(f"  {t.name}: fsx: WRONG BYTES: {e}")

    steps = [("creates", small),
             ("cp", lambda t, r: big_file(t, src, a.size_mib, r)),
             ("randw", lambda t, r: random_writes(t, t.sub("randw"), a.randw_mib, a.rand_writes, seed=r)),
             ("fsx", check),
             ("stat", lambda t, r: t.figs["stat"].append(stat_tree(t.sub("tree"), a.tree_files)))]
    for r in range(a.runs):
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        for key, step in steps:
            for t in order:
                try:
                    step(t, r)
                except (OSError, ValueError, subprocess.CalledProcessError, RuntimeError) as e:
                    # A system that fails a step is reported, not allowed to end the run.
                    t.errors.setdefault(key, []).append(f"run {r + 1}: {e}{log_tail(t)}")
                    log(f"  {t.name}: {key} failed: {e}")
        for t in order:
            log(f"  {t.name} run {r + 1}: " + ", ".join(
                f"{k} {fmt(v[-1])}" for k, v in t.figs.items() if v))


def verdict(kind, target, value, ratio):
    if value is None:
        return "n/a"
    if kind == "ratio":
        return "n/a" if ratio is None else ("pass" if ratio >= target else "FAIL")
    return "pass" if value <= target else "FAIL"


def table(targets, a, pool="poolfs", base="tmpfs"):
    """The markdown table: one column per system (ratio to tmpfs in brackets), then
    poolfs's target and result; and the fsx verdict line."""
    meds = {t.name: {k: med(v) for k, v in t.figs.items()} for t in targets}
    names = [t.name for t in targets]
    lines = ["| what | unit | " + " | ".join(t.title for t in targets) + " | target | result |",
             "| --- | --- |" + " ---: |" * len(targets) + " --- | --- |"]
    for key, label, unit, kind, target, better in ROWS:
        b = meds[base][key]
        cells = []
        for n in names:
            v = meds[n][key]
            ratio = v / b if (kind == "ratio" and v is not None and b) else None
            cells.append(fmt(v, ratio if n != base else None, none="-"))
        v = meds[pool][key]
        ratio = v / b if (v is not None and b) else None
        want = f">= {target:g}x tmpfs" if kind == "ratio" else f"<= {target:g} {unit}"
        result = verdict(kind, target, v, ratio)
        if key == "creates" and result == "pass":  # and ahead of every peer
            peers = [meds[n][key] for n in names if n not in (pool, base) and meds[n][key]]
            if any(p >= v for p in peers):
                result = "FAIL (a peer is ahead)"
        lines.append(f"| {label} | {unit} | " + " | ".join(cells) + f" | {want} | {result} |")
    lines.append("")
    for t in targets:
        lines.append(f"- fsx on {t.title}: wrong bytes: "
                     + ("0" if not t.wrong else f"{len(t.wrong)} run(s) FAILED: {t.wrong[0]}"))
    for t in targets:
        for key, errs in t.errors.items():
            lines.append(f"- {t.title}, {key}: {len(errs)} run(s) failed with an error: {errs[0]}")
    return "\n".join(lines), meds


def header(a):
    return (f"Issue 16 (3-node loopback pool, k={K} m={M}, encrypted, storage on disk; "
            f"{a.files} small files, {a.size_mib} MiB big file, {a.rand_writes} random writes "
            f"into {a.randw_mib} MiB, fsx {a.fsx_secs:g} s on 8 MiB, {a.tree_files}-file tree; "
            f"medians of {a.runs} interleaved runs; ratio to tmpfs in brackets):")


def add_args(ap):
    ap.add_argument("--rand-writes", type=int, default=1024, help="random 4 KiB writes per run")
    ap.add_argument("--randw-mib", type=int, default=256, help="file the random writes go into")
    ap.add_argument("--fsx-secs", type=float, default=10.0, help="seconds of each fsx run")
    ap.add_argument("--tree-files", type=int, default=50000, help="files of the stat tree")


def quick(a):
    a.rand_writes, a.randw_mib, a.fsx_secs, a.tree_files = 128, 16, 1.0, 500


def log_stderr(msg):
    print(msg, file=sys.stderr, flush=True)
