# Shared by the bench scripts (sourced, not run): building the release
# binaries and measuring one step. Expects ROOT (the checkout) and WORK
# (where each step's output goes).

# build_release: the release binaries a devnet and the client need, and
# /usr/bin/time for measuring.
build_release() {
    echo "== building release binaries" >&2
    (cd "$ROOT" && cargo build --release --quiet -p offsite-client -p offsite-tests \
        -p offsite-coordinator -p offsite-vendor -p offsite-nas)
    if [ ! -x /usr/bin/time ]; then apt-get install -y time >&2; fi
}

# measure NAME CMD...: runs CMD under /usr/bin/time; keeps "seconds max_rss_kb"
# in $WORK/NAME.time. Each step starts with nothing left to write back from
# the one before.
measure() {
    local name=$1
    shift
    echo "== $name" >&2
    sync
    if ! /usr/bin/time -f "%e %M" -o "$WORK/$name.time" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"; then
        echo "$name failed:" >&2
        tail -20 "$WORK/$name.err" >&2
        exit 1
    fi
}
