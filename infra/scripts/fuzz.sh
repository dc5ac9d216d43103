#!/usr/bin/env bash
# Bounded fuzzing: builds the cargo-fuzz targets of tests/fuzz with AddressSanitizer and fuzzes
# each for a fixed time, seeded from tests/fixtures/mail (parse; their header blocks for headers),
# tests/fixtures/tnef (tnef, and as binary MIME parts for parse) and infra/events (notification),
# plus a sample of the inputs earlier runs found. Exits non-zero when libFuzzer finds a crash, a
# leak, a timeout or an out-of-memory input (the input is printed in base64 and kept in
# tests/fuzz/artifacts/<target>/), or when a run's report is incomplete (it never started fuzzing).
#
#   bash infra/scripts/fuzz.sh                          # what CI runs: parse 90 s, the others 30 s
#   MAILBRIDGE_FUZZ_SECONDS=600 bash infra/scripts/fuzz.sh parse   # a longer run by hand
#
# libFuzzer's -max_total_time includes loading (running) its starting inputs: with the whole kept
# corpus (3,000+ inputs at 40-60/s on a loaded 2-core machine) the 30 s went to that replay and
# nothing was fuzzed. So each run starts from the seeds and the newest MAILBRIDGE_FUZZ_SAMPLE
# (default 200) kept inputs, and the report separates the start from the fuzzing.
#
# Environment: MAILBRIDGE_FUZZ_SECONDS (every target's time; default parse 90, others 30),
# MAILBRIDGE_FUZZ_TARGET_DIR (build cache, default $HOME/.cache/mailbridge-fuzz-target),
# MAILBRIDGE_FUZZ_CORPUS (the inputs runs found, kept between runs, default
# $HOME/.cache/mailbridge-fuzz-corpus; the newest MAILBRIDGE_FUZZ_MAX_CORPUS, default 4000, are
# kept), MAILBRIDGE_FUZZ_SAMPLE, MAILBRIDGE_FUZZ_FEATURES (e.g. "graph": the notification target
# also builds the Graph request; a much larger build).
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds_override=${MAILBRIDGE_FUZZ_SECONDS:-}
sample=${MAILBRIDGE_FUZZ_SAMPLE:-200}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(parse headers tnef notification)
export CARGO_TARGET_DIR=${MAILBRIDGE_FUZZ_TARGET_DIR:-$HOME/.cache/mailbridge-fuzz-target}
corpus_root=${MAILBRIDGE_FUZZ_CORPUS:-$HOME/.cache/mailbridge-fuzz-corpus}
max_corpus=${MAILBRIDGE_FUZZ_MAX_CORPUS:-4000}
features=${MAILBRIDGE_FUZZ_FEATURES:-}
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io (into \$CARGO_HOME/bin, reused by later runs)"
    cargo install cargo-fuzz --locked
fi

# The fuzz crate is its own workspace; start from the main lock file so it builds the same,
# already-vetted dependency versions (cargo adds libfuzzer-sys and keeps the rest).
[ -f tests/fuzz/Cargo.lock ] || cp Cargo.lock tests/fuzz/Cargo.lock

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
mkdir -p "$seeds/parse" "$seeds/headers" "$seeds/tnef" "$seeds/notification"
cp tests/fixtures/mail/*.eml "$seeds/parse/"
# The header blocks of the fixture mails (up to the first blank line), for the header target.
for eml in tests/fixtures/mail/*.eml; do
    awk '/^\r?$/ { exit } { print }' "$eml" >"$seeds/headers/$(basename "$eml" .eml).hdr"
done
# TNEF (winmail.dat): the raw files for the reader, and each as a binary MIME part for the
# parser, so that mutations hit the TNEF bytes rather than their base64.
cp tests/fixtures/tnef/*.tnef "$seeds/tnef/"
for tnef in tests/fixtures/tnef/*.tnef; do
    {
        printf 'From: a@example.com\r\nSubject: tnef\r\nMIME-Version: 1.0\r\n'
        printf 'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nbody\r\n'
        printf -- '--b\r\nContent-Type: application/ms-tnef; name=winmail.dat\r\nContent-Transfer-Encoding: binary\r\n\r\n'
        cat "$tnef"
        printf '\r\n--b--\r\n'
    } >"$seeds/parse/tnef-$(basename "$tnef" .tnef).eml"
done
# Queue-message bodies: the notification event and every SQS record body of the batch event.
python3 - "$seeds/notification" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
n = 0
for path in sorted(glob.glob("infra/events/*.json")):
    with open(path, "rb") as f:
        raw = f.read()
    doc = json.loads(raw)
    bodies = [r["body"] for r in doc.get("Records", []) if isinstance(r.get("body"), str)]
    if "version" in doc:
        bodies.append(raw.decode())
    for body in bodies:
        n += 1
        with open(os.path.join(out, f"seed-{n:03}.json"), "w") as f:
            f.write(body)
PY

feature_args=()
[ -z "$features" ] || feature_args=(--features "$features")

status=0
for target in "${targets[@]}"; do
    case "$target" in
        parse) max_len=65536; seconds=90 ;;
        headers) max_len=16384; seconds=30 ;;
        tnef) max_len=65536; seconds=30 ;;
        notification) max_len=65536; seconds=30 ;;
        *) echo "fuzz: unknown target $target" >&2; exit 2 ;;
    esac
    seconds=${seconds_override:-$seconds}
    corpus="$corpus_root/$target"
    found="$seeds/$target.found"
    mkdir -p "$corpus" "$found" "tests/fuzz/artifacts/$target"
    build_start=$(date +%s)
    cargo fuzz build --fuzz-dir tests/fuzz "${feature_args[@]}" "$target"
    echo "fuzz: $target built in $(( $(date +%s) - build_start )) s"
    # the starting inputs: the seeds and the newest kept inputs (names are content hashes)
    find "$corpus" -type f -printf '%T@ %p\n' | sort -rn >"$seeds/$target.kept"
    head -n "$sample" "$seeds/$target.kept" | cut -d' ' -f2- | xargs -r cp -t "$seeds/$target/"
    log="$seeds/$target.log"
    touch "$seeds/$target.started"
    run_start=$(date +%s)
    # -entropic=0: with the ~70,000 coverage features of the parser and its dependencies, the
    # entropic scheduler's bookkeeping (AddRareFeature) took a third of the time; without it the
    # same 30 s ran 47 % more inputs and reached more coverage (tests/fuzz/README.md).
    if cargo fuzz run --fuzz-dir tests/fuzz "${feature_args[@]}" "$target" \
        "$found" "$seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len="$max_len" -timeout=20 \
        -entropic=0 -print_final_stats=1 >"$log" 2>&1; then
        # The crash check's report: how many inputs started it, how many were fuzzed, at what
        # rate, what it found. A run without these lines never got to fuzzing: that fails too.
        started=$(grep -m1 -oE '^#[0-9]+[[:space:]]+INITED' "$log" | tr -dc 0-9)
        total=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | tr -dc 0-9)
        rss=$(grep -oE '^stat::peak_rss_mb: *[0-9]+' "$log" | tr -dc 0-9)
        done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
        elapsed=$(( $(date +%s) - run_start ))
        if [ -z "$started" ] || [ -z "$total" ] || [ -z "$rss" ] || [ -z "$done_line" ]; then
            status=1
            tail -n 30 "$log"
            echo "fuzz: $target: FAILED: the run's report is incomplete (no INITED/DONE/stat lines): it never fuzzed" >&2
            continue
        fi
        fuzzed=$(( total - started ))
        new_inputs=$(find "$found" -type f | wc -l)
        cp -n "$found"/* "$corpus"/ 2>/dev/null || true
        echo "fuzz: $target: ${elapsed} s: started from $started inputs, then fuzzed $fuzzed inputs (libFuzzer: $(echo "$done_line" | grep -oE 'exec/s: [0-9]+')), $new_inputs new corpus inputs; $(echo "$done_line" | grep -oE 'cov: [0-9]+ ft: [0-9]+'); peak RSS $rss MB; no crash"
    else
        status=1
        tail -n 60 "$log"
        for crash in "tests/fuzz/artifacts/$target"/*; do
            [ "$crash" -nt "$seeds/$target.started" ] || continue
            echo "fuzz: $target: crashing input $crash (base64):"
            base64 -w 0 "$crash" | head -c 20000
            echo
        done
        echo "fuzz: $target: FAILED (reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz $target <input>)" >&2
    fi
    # keep the newest inputs only (the kept corpus seeds later runs; it is not replayed whole)
    find "$corpus" -type f -printf '%T@ %p\n' | sort -rn >"$seeds/$target.kept"
    tail -n +"$(( max_corpus + 1 ))" "$seeds/$target.kept" | cut -d' ' -f2- | xargs -r rm -f
done
exit $status
