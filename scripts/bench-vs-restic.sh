#!/usr/bin/env bash
# Offsite against restic on the same machine, side by side in one run: first
# backup, second backup of the unchanged tree, and restore; wall time,
# throughput and peak memory (max RSS) of each, and the ratios.
#
# Offsite backs up to a release devnet (4 vendors x 2 NAS devices, R = 3) on
# this machine; restic to a local repository. Both read the same tree, which
# is warm in the page cache for both (it was just copied, or read by restic).
#
# usage: scripts/bench-vs-restic.sh [TREE]
#   TREE      a directory of at least 1 GB to back up; default: a mixed tree
#             made of the Rust toolchain (large binaries), /usr/include and
#             /usr/share/doc (tens of thousands of small text files)
#   BENCH_DIR where to work (default: a new directory under /tmp); not one
#             an earlier KEEP=1 run left, whose devnet cannot be started again
#   KEEP=1    keep BENCH_DIR afterwards
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${BENCH_DIR:-$(mktemp -d /tmp/offsite-bench.XXXXXX)}
mkdir -p "$WORK"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
DEVNET_DIR=$WORK/devnet

cleanup() {
    if [ -f "$DEVNET_DIR/devnet.json" ]; then
        "$BIN/offsite-devnet" down --dir "$DEVNET_DIR" >/dev/null 2>&1 || true
    fi
    if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

. "$ROOT/scripts/bench-common.sh"
build_release
if ! command -v restic >/dev/null; then apt-get install -y restic >&2; fi

if [ -n "${1:-}" ]; then
    TREE=$(cd "$1" && pwd)
else
    TREE=$WORK/tree
    echo "== copying a mixed tree into $TREE" >&2
    mkdir -p "$TREE"
    cp -a "$(rustc --print sysroot)" "$TREE/toolchain"
    cp -a /usr/include "$TREE/include"
    cp -a /usr/share/doc "$TREE/doc"
fi
BYTES=$(du -sb --apparent-size "$TREE" | cut -f1)
FILES=$(find "$TREE" -type f | wc -l)
echo "== tree: $TREE, $BYTES bytes in $FILES files" >&2

export RESTIC_PASSWORD=bench-password
export RESTIC_REPOSITORY=$WORK/restic-repo
export RESTIC_CACHE_DIR=$WORK/restic-cache
restic init --quiet >/dev/null
measure restic-backup-1 restic backup --quiet "$TREE"
measure restic-backup-2 restic backup --quiet "$TREE"
measure restic-restore restic restore latest --quiet --target "$WORK/restic-restore"
# restic's restore stays until the end: deleting 64,000 files just before
# offsite's restore would slow offsite's file creation (ext4 skips recently
# freed inodes), which restic did not have to pay.

"$BIN/offsite-devnet" up --dir "$DEVNET_DIR" --detach >&2
CONFIG=$DEVNET_DIR/client.toml
"$BIN/offsite" --config "$CONFIG" init >/dev/null
measure offsite-backup-1 "$BIN/offsite" --config "$CONFIG" --json backup "$TREE"
measure offsite-backup-2 "$BIN/offsite" --config "$CONFIG" --json backup "$TREE"
measure offsite-restore "$BIN/offsite" --config "$CONFIG" --json restore latest --target "$WORK/offsite-restore"
if ! diff -r --no-dereference -q "$TREE" "$WORK/offsite-restore/$(basename "$TREE")" >/dev/null; then
    echo "offsite's restore differs from the tree" >&2
    exit 1
fi
rm -rf "$WORK/offsite-restore"

python3 - "$WORK" "$BYTES" "$FILES" <<'EOF'
import os, sys
work, size, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def read(name):
    secs, kb = open(os.path.join(work, name + ".time")).read().split()[-2:]
    return float(secs), int(kb)
mib = size / 2**20
print(f"tree: {mib:.0f} MiB in {files} files; {os.cpu_count()} cores; {os.uname().release}")
print(f"{'step':<16}{'tool':<9}{'wall s':>8}{'MiB/s':>9}{'peak RSS MiB':>14}")
rows = {}
for step in ["backup-1", "backup-2", "restore"]:
    for tool in ["restic", "offsite"]:
        secs, kb = read(f"{tool}-{step}")
        rows[(tool, step)] = (secs, kb)
        print(f"{step:<16}{tool:<9}{secs:>8.1f}{mib / max(secs, 0.01):>9.1f}{kb / 1024:>14.0f}")
def ratio(step):
    return rows[("restic", step)][0] / max(rows[("offsite", step)][0], 0.01)
peak = max(kb for (tool, _), (_, kb) in rows.items() if tool == "offsite")
restic_peak = max(kb for (tool, _), (_, kb) in rows.items() if tool == "restic")
print()
print(f"first backup: offsite {ratio('backup-1'):.2f}x restic's throughput (target >= 3)")
print(f"second backup: offsite takes {1 / ratio('backup-2'):.2f} of restic's time (target <= 0.5)")
print(f"restore: offsite {ratio('restore'):.2f}x restic's throughput (target >= 2)")
print(f"peak memory: offsite {peak / 1024:.0f} MiB, restic {restic_peak / 1024:.0f} MiB (target: offsite <= restic)")
EOF
