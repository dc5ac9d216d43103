#!/usr/bin/env bash
# Parse throughput on a noisy (shared, virtualised) machine: the Rust bench binaries and Python's
# `email` (parse_python.py, `py` = compat32 parse + MIME walk, `pyfull` = the same work as the Rust
# parser) run in alternating 1-second rounds, and the medians and bests of each side are compared.
# One long run per side (what `cargo bench` prints) is at the mercy of whatever the host does
# during that run; here every side sees the same conditions.
#
#   cargo bench -p mailbridge-shared --bench parse_throughput --no-run    # prints the binary's path
#   bash infra/bench/parse-interleaved.sh [--rounds N] BENCH_BINARY [OTHER_BENCH_BINARY ...] [-- DIR ...]
#
# Several binaries (e.g. before/after a change, copied aside) are measured in the same rounds.
# Default directory: tests/fixtures/mail; name others (e.g. a corpus of real mail) after `--`.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=12
bins=()
dirs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --) shift; dirs=("$@"); break ;;
    *) bins+=("$(realpath "$1")"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || { sed -n '2,12p' "$0"; exit 2; }
if [ ${#dirs[@]} -eq 0 ]; then
  dirs=(tests/fixtures/mail)
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# MAILBRIDGE_BENCH_RAW=FILE keeps the per-round figures (side, corpus, MB/s; in round order).
[ -z "${MAILBRIDGE_BENCH_RAW:-}" ] || trap 'cp "$out" "$MAILBRIDGE_BENCH_RAW"; rm -f "$out"' EXIT
echo "machine: $(nproc) cores; $(date -u '+%Y-%m-%d %H:%M UTC'); load $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds"
for _ in $(seq "$rounds"); do
  for bin in "${bins[@]}"; do
    # The bench prints one row per directory, in order; column 4 is Rust MB/s per CPU second.
    MAILBRIDGE_BENCH_SECONDS=1 MAILBRIDGE_BENCH_RUST_ONLY=1 "$bin" "${dirs[@]}" | tail -n "${#dirs[@]}" \
      | awk -v b="$(basename "$bin")" -v d="${dirs[*]}" 'BEGIN{split(d, ds, " ")} {print b, ds[NR], $4}' >> "$out"
  done
  for dir in "${dirs[@]}"; do
    for work in full parse; do
      label=py; [ "$work" = full ] && label=pyfull
      python3 infra/bench/parse_python.py --min-seconds 1 --policy compat32 --work "$work" "$dir" \
        | python3 -c "import json, sys; print('$label', '$dir', json.load(sys.stdin)['mb_per_s'])" >> "$out"
    done
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, corpus, mbs = line.split()
    runs[(side, corpus)].append(float(mbs))
corpora = list(dict.fromkeys(c for _, c in runs))
rust = sorted({s for s, _ in runs if s not in ("py", "pyfull")})
med = statistics.median
# Three ways to read the ratio on a shared machine, where other load only ever slows a side down:
# medians of each side; bests of each side (the least disturbed round of each); and the median of
# the per-round ratios (each Rust figure against the pyfull figure of the same round, seconds apart).
print("| corpus | build | Rust MB/s median (best) | pyfull MB/s median (best) | py MB/s median (best) "
      "| × pyfull: medians | bests | per round | × py, medians |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for c in corpora:
    f, p = runs[("pyfull", c)], runs[("py", c)]
    for b in rust:
        r = runs[(b, c)]
        per_round = med([ri / fi for ri, fi in zip(r, f)])
        print(f"| {c} | {b} | {med(r):.1f} ({max(r):.1f}) | {med(f):.2f} ({max(f):.2f}) | {med(p):.2f} ({max(p):.2f}) "
              f"| **{med(r) / med(f):.1f}×** | **{max(r) / max(f):.1f}×** | **{per_round:.1f}×** | {med(r) / med(p):.1f}× |")
PY
