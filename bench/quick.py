#!/usr/bin/env python3
"""Quick bench of the two small targets: create+write+close of 1000 x 4 KiB files, and
open + read of the first byte with the page cache dropped, on a `poolfs up` pool.

usage (root): bench/quick.py BIN [RUNS=5] [BIG_MIB=64]. BIN must be named `poolfs`
(`poolfs down` stops only processes of that name). HOLD=/path pauses after setup
(writes /path.ready with the pids, goes on once /path.go exists), for profiling."""
import json, os, shutil, statistics, subprocess, sys, tempfile, time
binary = os.path.abspath(sys.argv[1]); runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
big_mib = int(sys.argv[3]) if len(sys.argv) > 3 else 64
hold = os.environ.get("HOLD")  # pause for profiling
work = tempfile.mkdtemp(prefix="poolfs-quick-", dir=os.environ.get("WORKDIR", "/tmp"))
pool, data = os.path.join(work, "pool"), os.path.join(work, "data")
def drop():
    os.sync(); open("/proc/sys/vm/drop_caches", "w").write("3\n")
def small(d, count=1000, size=4096):
    os.makedirs(d, exist_ok=True); buf = os.urandom(size)
    t = time.perf_counter()
    for i in range(count):
        with open(os.path.join(d, f"f{i}"), "wb") as f: f.write(buf)
    return count / (time.perf_counter() - t)
try:
    subprocess.run([binary, "up", pool, "--nodes", "3", "--data-dir", data], check=True, stdout=subprocess.DEVNULL)
    state = next(os.path.join(dp, "up.json") for dp, _, fs in os.walk(data) if "up.json" in fs)
    pids = json.load(open(state))["pids"]
    print("pids", pids, flush=True)
    big = os.path.join(pool, "big")
    with open(big, "wb") as f:
        for _ in range(big_mib): f.write(os.urandom(1 << 20))
    if hold:
        open(hold + ".ready", "w").write(json.dumps(pids))
        while not os.path.exists(hold + ".go"): time.sleep(0.1)
    sm, tt = [], []
    for r in range(runs):
        drop()
        t = time.perf_counter()
        fd = os.open(big, os.O_RDONLY); os.read(fd, 1); os.close(fd)  # as bench/run.py
        tt.append((time.perf_counter() - t) * 1000)
        d = os.path.join(pool, f"small{r}")
        sm.append(small(d)); shutil.rmtree(d)
    print("small files/s", ["%.0f" % x for x in sm], "median %.0f" % statistics.median(sm))
    print("ttfb ms", ["%.2f" % x for x in tt], "median %.2f" % statistics.median(tt))
finally:
    subprocess.run([binary, "down", pool, "--data-dir", data], stdout=subprocess.DEVNULL)
    shutil.rmtree(work, ignore_errors=True)
