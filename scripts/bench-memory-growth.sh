#!/usr/bin/env bash
# How the client's peak memory grows with the tree: backs up a generated tree
# of N files, and one of 10 x N files (ten times the bytes too), each to a
# fresh release devnet (4 vendors x 2 NAS devices, R = 3); backs it up again
# unchanged and restores it; prints wall time and peak RSS of each step and
# the 10x/1x ratio of the peaks. Issue 5's target: a tree ten times larger
# must not need ten times the memory.
#
# usage: scripts/bench-memory-growth.sh [N]
#   N         files in the small tree (default 20000; about 190 MiB)
#   BENCH_DIR where to work: a new directory is made in it, and removed at
#             the end (default: /tmp)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${BENCH_DIR:-/tmp}"
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/offsite-growth.XXXXXX")
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
SMALL=${1:-20000}
case $SMALL in
'' | *[!0-9]*)
    echo "N must be a number of files, such as 20000" >&2
    exit 2
    ;;
esac
SMALL=$((10#$SMALL))

cleanup() {
    for devnet in "$WORK"/devnet-*; do
        if [ -f "$devnet/devnet.json" ]; then
            "$BIN/offsite-devnet" down --dir "$devnet" >/dev/null 2>&1 || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

. "$ROOT/scripts/bench-common.sh"
build_release

# tree DIR FILES: FILES small text files (1 to 16 KiB, each unique, about
# 3:1 compressible) in directories of 500, and one 16 MiB half-random file
# per 5,000 small ones.
tree() {
    python3 - "$1" "$2" <<'EOF'
import os, random, sys
root, files = sys.argv[1], int(sys.argv[2])
rng = random.Random(files)
words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
         for _ in range(4096)]
text = b" ".join(rng.choice(words) for _ in range(1 << 20))
for i in range(files):
    d = os.path.join(root, f"d{i // 500:05}")
    if i % 500 == 0:
        os.makedirs(d)
    size = rng.randint(1024, 16384)
    start = rng.randrange(len(text) - size)
    with open(os.path.join(d, f"f{i:07}.txt"), "wb") as f:
        f.write(b"%d %s\n" % (i, os.urandom(16).hex().encode()) + text[start:start + size])
for i in range(max(1, files // 5000)):
    with open(os.path.join(root, f"big{i:03}.bin"), "wb") as f:
        for _ in range(16):
            f.write(os.urandom(1 << 19) + text[: 1 << 19])
EOF
}

for scale in 1 10; do
    files=$((SMALL * scale))
    tree_dir=$WORK/tree-$scale
    devnet=$WORK/devnet-$scale
    echo "== generating $files files in $tree_dir" >&2
    mkdir -p "$tree_dir"
    tree "$tree_dir" "$files"
    du -sb --apparent-size "$tree_dir" | cut -f1 >"$WORK/bytes-$scale"
    "$BIN/offsite-devnet" up --dir "$devnet" --detach >&2
    config=$devnet/client.toml
    "$BIN/offsite" --config "$config" init >/dev/null
    measure "backup-1-x$scale" "$BIN/offsite" --config "$config" --json backup "$tree_dir"
    measure "backup-2-x$scale" "$BIN/offsite" --config "$config" --json backup "$tree_dir"
    measure "restore-x$scale" "$BIN/offsite" --config "$config" --json restore latest \
        --target "$WORK/restore-$scale"
    if ! diff -r -q "$tree_dir" "$WORK/restore-$scale/tree-$scale" >/dev/null; then
        echo "the restore of the x$scale tree differs from it" >&2
        exit 1
    fi
    "$BIN/offsite-devnet" down --dir "$devnet" >&2
    rm -rf "$tree_dir" "$WORK/restore-$scale" "$devnet"
done

python3 - "$WORK" "$SMALL" <<'EOF'
import os, sys
work, small = sys.argv[1], int(sys.argv[2])
def read(name):
    secs, kb = open(os.path.join(work, name + ".time")).read().split()[-2:]
    return float(secs), int(kb) / 1024
for scale in (1, 10):
    mib = int(open(os.path.join(work, f"bytes-{scale}")).read()) / 2**20
    print(f"x{scale}: {small * scale} small files, {mib:.0f} MiB")
print(f"{'step':<12}{'x1 s':>8}{'x1 RSS MiB':>12}{'x10 s':>8}{'x10 RSS MiB':>13}{'RSS ratio':>11}")
for step in ("backup-1", "backup-2", "restore"):
    s1, m1 = read(f"{step}-x1")
    s10, m10 = read(f"{step}-x10")
    print(f"{step:<12}{s1:>8.1f}{m1:>12.0f}{s10:>8.1f}{m10:>13.0f}{m10 / m1:>11.2f}")
EOF
