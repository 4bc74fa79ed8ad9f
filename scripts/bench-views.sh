#!/usr/bin/env bash
# The tenant's views over many hosts and snapshots (issue 18): backs up
# HOSTS small host trees, SNAPSHOTS in all (each host's config and a data
# file change between its snapshots; one file is the same on every host),
# to a release devnet; reads every view once to warm the local cache, then
# times `snapshots`, `hosts`, `find`, `history` and `dups`, first with the
# marketplace up (the snapshot list from the coordinators, every listing
# from the cache), then with it down (everything from the cache). Prints
# the best and the median of three runs of each.
#
# usage: scripts/bench-views.sh [HOSTS] [SNAPSHOTS]
#   HOSTS      hosts of the tenant (default 50)
#   SNAPSHOTS  snapshots in all, spread evenly over the hosts (default 1000)
#   BENCH_DIR  where to work: a new directory is made in it, and removed at
#              the end (default: /tmp)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "${BENCH_DIR:-/tmp}"
WORK=$(mktemp -d "${BENCH_DIR:-/tmp}/offsite-views.XXXXXX")
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HOSTS=${1:-50}
SNAPSHOTS=${2:-1000}
for n in "$HOSTS" "$SNAPSHOTS"; do
    case $n in
    '' | *[!0-9]* | 0)
        echo "HOSTS and SNAPSHOTS must be positive numbers, such as 50 1000" >&2
        exit 2
        ;;
    esac
done
ROUNDS=$(((SNAPSHOTS + HOSTS - 1) / HOSTS))

cleanup() {
    if [ -f "$WORK/devnet/devnet.json" ]; then
        "$BIN/offsite-devnet" down --dir "$WORK/devnet" >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

. "$ROOT/scripts/bench-common.sh"
build_release

devnet=$WORK/devnet
"$BIN/offsite-devnet" up --dir "$devnet" --detach >&2
"$BIN/offsite" --config "$devnet/client.toml" init >/dev/null

# host N: its config (the devnet's, with its own host name) and its tree.
for h in $(seq -w 1 "$HOSTS"); do
    grep -v '^host *=' "$devnet/client.toml" >"$devnet/client-h$h.toml"
    sed -i "1i host = \"host-$h\"" "$devnet/client-h$h.toml"
    tree=$WORK/trees/host-$h
    mkdir -p "$tree/etc" "$tree/www" "$tree/data"
    echo "shared by every host" >"$tree/etc/common.conf"
    for f in $(seq -w 1 40); do
        head -c 2000 /dev/urandom | base64 >"$tree/data/file-$f.txt"
    done
    echo "<h1>host $h</h1>" >"$tree/www/index.html"
done

echo "== $SNAPSHOTS backups over $HOSTS hosts" >&2
start=$(date +%s)
made=0
for round in $(seq 1 "$ROUNDS"); do
    for h in $(seq -w 1 "$HOSTS"); do
        [ "$made" -lt "$SNAPSHOTS" ] || break
        tree=$WORK/trees/host-$h
        echo "setting $round" >>"$tree/etc/app.conf"
        head -c 500 /dev/urandom | base64 >"$tree/data/file-$(printf %02d $((round % 40 + 1))).txt"
        "$BIN/offsite" --config "$devnet/client-h$h.toml" --json backup "$tree" >/dev/null
        made=$((made + 1))
    done
done
echo "   took $(($(date +%s) - start)) s" >&2

config=$devnet/client-h$(printf "%0${#HOSTS}d" 1).toml
views=(
    "snapshots:snapshots"
    "hosts:hosts"
    "find:find app.conf"
    "history:history host-$(printf "%0${#HOSTS}d" 1)/etc/app.conf --host host-$(printf "%0${#HOSTS}d" 1)"
    "dups:dups"
)

# Each view once, to fill the cache.
for view in "${views[@]}"; do
    # shellcheck disable=SC2086
    "$BIN/offsite" --config "$config" --json ${view#*:} >/dev/null
done

time_views() {
    local phase=$1
    for view in "${views[@]}"; do
        name=${view%%:*}
        for run in 1 2 3; do
            # shellcheck disable=SC2086
            measure "$phase-$name-$run" "$BIN/offsite" --config "$config" --json ${view#*:}
        done
    done
}
time_views up
"$BIN/offsite-devnet" down --dir "$devnet" >&2
time_views down

python3 - "$WORK" "$HOSTS" "$SNAPSHOTS" <<'EOF'
import json, os, sys
work, hosts, snapshots = sys.argv[1], sys.argv[2], sys.argv[3]
print(f"{hosts} hosts, {snapshots} snapshots; seconds, best and median of 3")
print(f"{'view':<12}{'marketplace up':>18}{'marketplace down':>20}  answer")
for name in ("snapshots", "hosts", "find", "history", "dups"):
    cells = []
    for phase in ("up", "down"):
        times = sorted(float(open(os.path.join(work, f"{phase}-{name}-{r}.time")).read().split()[-2])
                       for r in (1, 2, 3))
        cells.append(f"{times[0]:.2f} / {times[1]:.2f}")
    out = json.load(open(os.path.join(work, f"down-{name}-1.out")))
    size = {"snapshots": "snapshots", "hosts": "hosts", "find": "matches",
            "history": "versions", "dups": "duplicates"}[name]
    answer = f"{len(out[size])} {size}, cache: {out['from_cache']}"
    print(f"{name:<12}{cells[0]:>18}{cells[1]:>20}  {answer}")
EOF
