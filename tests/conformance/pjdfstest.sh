#!/usr/bin/env bash
# Runs the pjdfstest POSIX conformance suite (https://github.com/pjd/pjdfstest) against a
# fresh loopback pool, as root with --allow-other (its tests switch to other uids).
#
#   tests/conformance/pjdfstest.sh SUITE_DIR [POOLFS_BINARY]
#
# SUITE_DIR is a checkout of pjdfstest outside this repository (it is not ours, so it
# is not committed); it is built there if needed (autoconf, automake, gcc). Needs root,
# fuse3 and perl's `prove`. Prints prove's summary and the count of test files passed;
# exits non-zero if any failed. Leaves no mount or process behind.
set -euo pipefail
suite=$(cd "${1:?usage: $0 SUITE_DIR [POOLFS_BINARY]}" && pwd)
bin=$(realpath "${2:-target/release/poolfs}")
[ "$(id -u)" = 0 ] || { echo "run as root: the suite changes uids and makes device nodes" >&2; exit 2; }
command -v prove >/dev/null || { echo "prove (perl) is needed" >&2; exit 2; }
if [ ! -x "$suite/pjdfstest" ]; then
    (cd "$suite" && autoreconf -ifs >/dev/null && ./configure >/dev/null && make pjdfstest >/dev/null)
fi
work=$(mktemp -d /tmp/poolfs-pjdfstest.XXXXXX)
mnt=$work/mnt
cleanup() {
    "$bin" down "$mnt" --data-dir "$work/data" >/dev/null 2>&1 || fusermount3 -u -z "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
"$bin" up "$mnt" --data-dir "$work/data" --allow-other
mkdir "$mnt/suite"
echo "pjdfstest $(git -C "$suite" rev-parse HEAD 2>/dev/null || echo '(not a git checkout)')"
rc=0
(cd "$mnt/suite" && prove -r "$suite/tests") > "$work/prove.log" 2>&1 || rc=$?
failed=$(grep -c 'Wstat' "$work/prove.log" || true)
total=$(find "$suite/tests" -name '*.t' | wc -l)
grep -E 'Wstat|Failed tests|^Files=|^Result' "$work/prove.log" || true
echo "test files passed: $((total - failed)) of $total"
exit $rc
