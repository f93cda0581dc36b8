#!/usr/bin/env python3
"""poolfs benchmark: one run against a local tmpfs baseline, medians of several runs.

usage: bench/run.py [--size-mib 1024] [--runs 3] [--nodes 3] [--bin target/release/poolfs]
Needs root (mounts tmpfs, drops the page cache) and fuse3. Starts its own loopback pool
with `poolfs up`, and stops it and removes everything at the end.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

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

def cp(src, dst):
    sh("cp", src, dst)

def cat(path):
    sh("cat", path, stdout=subprocess.DEVNULL)

def small_files(d, count=1000, size=4096):
    os.makedirs(d, exist_ok=True)
    buf = os.urandom(size)
    for i in range(count):
        with open(os.path.join(d, f"f{i}"), "wb") as f:
            f.write(buf)

def first_byte(path):
    with open(path, "rb") as f:
        return f.read(1)

def measure(target, src, size, runs):
    """Medians for one target directory: MiB/s for cp and cat, files/s, seconds to first byte."""
    res = {"cp": [], "cat": [], "small": [], "ttfb": []}
    for r in range(runs):
        dst = os.path.join(target, f"big{r}")
        res["cp"].append(size / timed(lambda: cp(src, dst)))
        drop_caches()
        res["cat"].append(size / timed(lambda: cat(dst)))
        drop_caches()
        res["ttfb"].append(timed(lambda: first_byte(dst)))
        os.unlink(dst)
        d = os.path.join(target, f"small{r}")
        res["small"].append(1000 / timed(lambda: small_files(d)))
        shutil.rmtree(d)
    return {k: statistics.median(v) for k, v in res.items()}

def vm_hwm(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--bin", default="target/release/poolfs")
    a = ap.parse_args()
    binary = os.path.abspath(a.bin)
    work = tempfile.mkdtemp(prefix="poolfs-bench-")
    src_dir, tmpfs, pool, data = (os.path.join(work, n) for n in ("src", "tmpfs", "pool", "data"))
    for d in (src_dir, tmpfs):
        os.makedirs(d)
    size = a.size_mib * 1024 * 1024
    mounted = []
    try:
        sh("mount", "-t", "tmpfs", "-o", f"size={a.size_mib * 2 + 256}m", "tmpfs", src_dir); mounted.append(src_dir)
        sh("mount", "-t", "tmpfs", "-o", f"size={a.size_mib * 2 + 256}m", "tmpfs", tmpfs); mounted.append(tmpfs)
        src = os.path.join(src_dir, "src")
        with open(src, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        sh(binary, "up", pool, "--nodes", str(a.nodes), "--data-dir", data, stdout=subprocess.DEVNULL)
        state = next(os.path.join(dp, "up.json") for dp, _, fs in os.walk(data) if "up.json" in fs)
        mount_pid = json.load(open(state))["pids"][0]
        base = measure(tmpfs, src, a.size_mib, a.runs)
        ours = measure(pool, src, a.size_mib, a.runs)
        rss = vm_hwm(mount_pid)
        print(f"poolfs benchmark: {a.nodes}-node loopback pool, {a.size_mib} MiB file, medians of {a.runs} runs")
        print(f"{'what':<44} {'tmpfs':>12} {'poolfs':>12} {'ratio':>7}")
        rows = [
            ("cp into the mount, through close (MiB/s)", "cp", True),
            ("cat after dropping caches (MiB/s)", "cat", True),
            ("create+write+close 4 KiB files (files/s)", "small", True),
            ("open + read first byte, caches dropped (ms)", "ttfb", False),
        ]
        for label, key, higher in rows:
            b, o = base[key], ours[key]
            scale = 1000 if key == "ttfb" else 1
            ratio = o / b if higher else b / o
            print(f"{label:<44} {b * scale:>12.2f} {o * scale:>12.2f} {ratio:>6.3f}x")
        print(f"{'peak resident memory of the mount process':<44} {'':>12} {rss / 2**20:>9.1f} MiB")
    finally:
        if os.path.exists(pool):
            subprocess.run([binary, "down", pool, "--data-dir", data], stdout=subprocess.DEVNULL)
        for m in mounted:
            subprocess.run(["umount", m])
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
