#!/usr/bin/env bash
# put/get of a 1 GiB file through a 4-node loopback pool (no mount) next to cp of the
# same file into tmpfs, 3 runs each. Needs root (tmpfs mounts, dropping the page cache).
# usage: bench/putget.sh [path/to/poolfs]
set -euo pipefail
B=$(realpath "${1:-target/release/poolfs}")
T=$(mktemp -d /tmp/poolfs-putget.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    umount "$T/src" "$T/tmpfs" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT
mkdir "$T/src" "$T/tmpfs"
mount -t tmpfs -o size=2200m tmpfs "$T/src"
mount -t tmpfs -o size=2200m tmpfs "$T/tmpfs"
head -c 1073741824 /dev/urandom > "$T/src/f"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
C=127.0.0.1:$(port)
"$B" controller --listen "$C" --state "$T/c" 2>"$T/c.log" & PIDS+=($!)
sleep 0.3
for i in 1 2 3 4; do
    "$B" node --storage "$T/n$i" --listen 127.0.0.1:0 --controller "$C" 2>"$T/n$i.log" & PIDS+=($!)
done
sleep 1.5
rate() { python3 -c "import sys; print(f'{1024/($2-$1):8.1f} MiB/s')" "$1" "$2"; }
now() { date +%s.%N; }
for r in 1 2 3; do
    s=$(now); cp "$T/src/f" "$T/tmpfs/f"; e=$(now); echo "run $r  cp into tmpfs  $(rate "$s" "$e")"; rm "$T/tmpfs/f"
    s=$(now); "$B" put "$T/src/f" --name "f$r" -c "$C" --catalog "$T/cat" 2>/dev/null; e=$(now); echo "run $r  poolfs put     $(rate "$s" "$e")"
    sync; echo 3 > /proc/sys/vm/drop_caches
    s=$(now); "$B" get "f$r" "$T/tmpfs/out" -c "$C" --catalog "$T/cat" 2>/dev/null; e=$(now); echo "run $r  poolfs get     $(rate "$s" "$e")"
    cmp "$T/src/f" "$T/tmpfs/out"; rm "$T/tmpfs/out"
done
