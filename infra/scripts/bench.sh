#!/usr/bin/env bash
# Every benchmark in one go; prints the numbers (BENCHMARKS.md explains each).
#
#   bash infra/scripts/bench.sh                 # all, bootstraps built with the release profile
#   bash infra/scripts/bench.sh init warm       # only some: init warm sender poller parser sizes
#   PROFILE=bench STARTS=30 bash infra/scripts/bench.sh init
#
#   init    init time of each bootstrap vs a hello-world lambda_runtime floor (same profile)
#   warm    CPU and AWS/token calls per warm invocation (per notification, per polled mail, idle poll)
#   sender  send-notifications batch latency under stand-in latency L (bench profile)
#   poller  poll-mailboxes: 1,000 mails + a 20 MB attachment, throughput and peak RSS (bench profile)
#   parser  parse throughput vs Python's email package (one run per side, then ROUNDS=8 interleaved rounds)
#   sizes   bootstrap sizes (target/lambda-<arch>/*/bootstrap), if infra/scripts/build-lambdas.sh built them
#   outbound  `mailbridge sendmail` entry latency; send-notifications CPU per MIME vs JSON notification (bench profile)
#   push    time to ticket, push vs scheduled polling every 60 s: 200 mails at random times over 270 s (dev profile, ~5 min)
#
# Needs the local-stack prerequisites (bash infra/scripts/install-prerequisites.sh). Numbers are
# noisy on a shared machine: the load average is printed with each part.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${PROFILE:-release}
STARTS=${STARTS:-20}
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(init warm sender poller parser sizes outbound push)
want() { local s; for s in "${steps[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
section() { echo; echo "=== $1 ($(date -u '+%H:%M:%S UTC'), load $(cut -d' ' -f1-3 /proc/loadavg))"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u '+%Y-%m-%d'); profile $PROFILE"
bins="$TARGET_DIR/bench-bootstraps-$PROFILE"

if want init || want warm; then
  section "init time ($PROFILE, $STARTS starts per binary)"
  cargo run -q -p mailbridge-local-stack --bin bench-init -- --profile "$PROFILE" --starts "$STARTS" --bins-out "$bins"
fi
if want warm; then
  section "warm invocation cost ($PROFILE bootstraps in $bins)"
  MAILBRIDGE_BENCH_BINS="$bins" cargo test -q -p mailbridge-tests --test bench_warm_cost -- --ignored --nocapture --test-threads 1 2>&1 | grep -E '^bench:|test result|panicked'
fi
if want sender || want poller || want outbound; then
  # the tests run these bootstraps and the CLI as processes; they never build them themselves
  cargo build -q --profile bench --workspace --bins
fi
if want sender; then
  section "send-notifications batch latency"
  cargo test -q --profile bench -p mailbridge-tests --test send_notifications benchmark -- --nocapture 2>&1 | grep -Ei 'bench|L =|test result|panicked'
fi
if want poller; then
  section "poll-mailboxes throughput and peak RSS"
  cargo test -q --profile bench -p mailbridge-tests --test bench_poll -- --ignored --nocapture 2>&1 | grep -E '^bench|test result|panicked'
fi
if want outbound; then
  section "outbound: sendmail entry latency, CPU per MIME vs JSON notification"
  cargo test -q --profile bench -p mailbridge-tests --test bench_outbound -- --ignored --nocapture --test-threads 1 2>&1 | grep -E '^bench|test result|panicked'
fi
if want push; then
  section "time to ticket, push vs scheduled polling (dev profile bootstraps)"
  cargo build -q --workspace --bins
  cargo test -q -p mailbridge-tests --test push -- --ignored --nocapture bench_ 2>&1 | grep -E '^bench|test result|panicked'
fi
if want parser; then
  section "parse throughput vs Python"
  cargo bench -q -p mailbridge-shared --bench parse_throughput
  # The same binary in alternating 1-second rounds with both Python baselines: medians that one
  # long run per side cannot give on a shared machine (BENCHMARKS.md, parser).
  bench_bin=$(cargo bench -p mailbridge-shared --bench parse_throughput --no-run 2>&1 \
    | sed -n 's/.*(\(.*parse_throughput-[^)]*\)).*/\1/p' | tail -n 1)
  [ -n "$bench_bin" ] && bash infra/bench/parse-interleaved.sh --rounds "${ROUNDS:-8}" "$bench_bin"
fi
if want sizes; then
  section "arm64 bootstrap sizes"
  found=0
  for f in "$TARGET_DIR"/lambda-*/*/bootstrap "$TARGET_DIR"/lambda/*/bootstrap; do
    [ -f "$f" ] || continue
    found=1
    zipped=$(python3 -c 'import io,sys,zipfile; b=io.BytesIO(); z=zipfile.ZipFile(b,"w",zipfile.ZIP_DEFLATED); z.write(sys.argv[1],"bootstrap"); z.close(); print(len(b.getvalue()))' "$f")
    printf '%-36s %6.2f MiB (zipped %5.2f MiB)  %s\n' "$(basename "$(dirname "$(dirname "$f")")")/$(basename "$(dirname "$f")")" \
      "$(echo "$(stat -c %s "$f") / 1048576" | bc -l)" "$(echo "$zipped / 1048576" | bc -l)" "$(file -b "$f" | cut -d, -f1-2)"
  done
  [ $found = 1 ] || echo "no $TARGET_DIR/lambda-*/*/bootstrap: run bash infra/scripts/build-lambdas.sh first (arm64 release build, slow)"
fi
