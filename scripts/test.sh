#!/usr/bin/env bash
# Every test of the workspace, the test binaries side by side: `make test` runs this. The
# end-to-end binaries (kafka, guarantees, kubernetes, ...) wait on brokers, databases and API
# servers far more than they compute, so running them one after another (what `cargo test
# --workspace` does) leaves the machine idle most of the time.
#
#   scripts/test.sh [CARGO_TEST_ARGS...]      e.g. scripts/test.sh --release
#
# Environment: TEST_JOBS (test binaries at once, default 3: with 4 on 2 cores, timing-sensitive
# tests failed now and then), CARGO (default cargo). `guarantees` runs alone once the others are
# done: its kill and restore tests time their kills against transactions, and with other
# binaries beside it one of them met an offset-bookkeeping failure (a held event dispatched after
# newer ones) that it never met alone: see the closing note of issue 35. Each binary's
# output goes to target/test-logs/NAME.log; a failing binary's log is printed at the end and the
# script exits non-zero. Arguments after `--` reach every binary (a test name filter, ...).
set -uo pipefail
CARGO=${CARGO:-cargo}
JOBS=${TEST_JOBS:-3}
cargo_args=() bin_args=()
while [ $# -gt 0 ]; do
  if [ "$1" = -- ]; then shift; bin_args=("$@"); break; fi
  cargo_args+=("$1"); shift
done
root=$(cd "$(dirname "$0")/.." && pwd)
logs=$root/target/test-logs
rm -rf "$logs" && mkdir -p "$logs"

# Build every test binary once and list them (name and path), longest-running first: the
# end-to-end binaries start at once, unit tests fill the gaps.
list=$("$CARGO" test --workspace --no-run --message-format=json "${cargo_args[@]}" 2>"$logs/build.log" \
  | python3 -c '
import json, sys
slow = ["kubernetes", "kafka", "databases", "plugins", "faults"]
solo = ["guarantees"]
bins = []
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        t = m["target"]
        name = t["name"] if t["kind"] != ["lib"] else t["name"] + "-unit"
        pkg = m["manifest_path"].rsplit("/", 1)[0]
        rank = 1000 if t["name"] in solo else slow.index(t["name"]) if t["name"] in slow else len(slow)
        bins.append((rank, name, m["executable"], pkg))
for _, name, exe, pkg in sorted(bins):
    print(name, exe, pkg)
') || { cat "$logs/build.log"; echo "error: building the tests failed (log above)"; exit 1; }
[ -n "$list" ] || { cat "$logs/build.log"; echo "error: no test binaries were built"; exit 1; }

start=$(date +%s)
run_one() {
  local name=$1 exe=$2 pkg=$3 t0 status
  t0=$(date +%s)
  # As cargo runs a test binary: in its package's directory, CARGO and CARGO_MANIFEST_DIR set.
  ( cd "$pkg" && CARGO=$(command -v "$CARGO") CARGO_MANIFEST_DIR=$pkg "$exe" "${bin_args[@]}" ) \
    >"$logs/$name.log" 2>&1
  status=$?
  echo "$status $(( $(date +%s) - t0 ))" >"$logs/$name.status"
}
while read -r name exe pkg; do
  if [ "$name" = guarantees ]; then continue; fi
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
  echo "== $name (started at +$(( $(date +%s) - start )) s)"
  run_one "$name" "$exe" "$pkg" &
done <<<"$list"
wait
while read -r name exe pkg; do
  [ "$name" = guarantees ] || continue
  echo "== $name, alone (started at +$(( $(date +%s) - start )) s)"
  run_one "$name" "$exe" "$pkg"
done <<<"$list"

failed=0
echo
while read -r name _; do
  read -r status secs <"$logs/$name.status"
  result=$(grep -E '^test result:' "$logs/$name.log" | tail -1)
  printf '%-24s %4ss  %s\n' "$name" "$secs" "${result:-no result (status $status)}"
  [ "$status" = 0 ] || failed=1
done <<<"$list"
# Doc tests (a separate cargo step; fast).
if ! "$CARGO" test --workspace --doc "${cargo_args[@]}" >"$logs/doctests.log" 2>&1; then
  echo "doctests: FAILED"; failed=1
fi
echo "all test binaries: $(( $(date +%s) - start )) s"
if [ "$failed" != 0 ]; then
  while read -r name _; do
    read -r status _ <"$logs/$name.status"
    [ "$status" = 0 ] && continue
    echo; echo "==== $name failed (target/test-logs/$name.log):"
    sed -n '/^failures:$/,$p' "$logs/$name.log" | head -400
    grep -q '^failures:$' "$logs/$name.log" || tail -100 "$logs/$name.log"
  done <<<"$list"
  grep -q FAILED "$logs/doctests.log" 2>/dev/null && tail -50 "$logs/doctests.log"
  exit 1
fi
