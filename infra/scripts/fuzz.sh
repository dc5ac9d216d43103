#!/usr/bin/env bash
# Bounded fuzzing (issue 9): builds the cargo-fuzz targets of tests/fuzz with AddressSanitizer and
# runs each for a fixed number of seconds, seeded from tests/fixtures/mail (parse; their header
# blocks for headers),
# tests/fixtures/tnef (tnef, and as binary MIME parts for parse) and infra/events
# (notification). Exits non-zero when libFuzzer finds a crash, a leak, a timeout or an
# out-of-memory input; the input is printed (base64) and kept in tests/fuzz/artifacts/<target>/.
#
#   bash infra/scripts/fuzz.sh                          # 30 s per target (what CI runs)
#   MAILBRIDGE_FUZZ_SECONDS=600 bash infra/scripts/fuzz.sh parse   # a longer run by hand
#
# Environment: MAILBRIDGE_FUZZ_SECONDS (default 30), MAILBRIDGE_FUZZ_TARGET_DIR (build cache,
# default $HOME/.cache/mailbridge-fuzz-target), MAILBRIDGE_FUZZ_CORPUS (libFuzzer's growing corpus,
# kept between runs, default $HOME/.cache/mailbridge-fuzz-corpus; minimised with libFuzzer -merge
# once a target's holds more than MAILBRIDGE_FUZZ_MAX_CORPUS inputs, default 4000, and half again
# as many as after its last minimisation), MAILBRIDGE_FUZZ_FEATURES
# (e.g. "graph": the notification target also builds the Graph request; a much larger build).
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${MAILBRIDGE_FUZZ_SECONDS:-30}
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
        parse) max_len=65536 ;;
        headers) max_len=16384 ;;
        tnef) max_len=65536 ;;
        notification) max_len=65536 ;;
        *) echo "fuzz: unknown target $target" >&2; exit 2 ;;
    esac
    corpus="$corpus_root/$target"
    mkdir -p "$corpus" "tests/fuzz/artifacts/$target"
    build_start=$(date +%s)
    cargo fuzz build --fuzz-dir tests/fuzz "${feature_args[@]}" "$target"
    echo "fuzz: $target built in $(( $(date +%s) - build_start )) s; running ${seconds} s"
    # libFuzzer replays the whole kept corpus before the timed run starts, and every run adds to
    # it: past a few thousand inputs, keep only those that still add coverage (libFuzzer -merge).
    # A minimised corpus can stay above the limit; it is minimised again once it has grown by half.
    inputs=$(find "$corpus" -type f | wc -l)
    minimised_size=$(cat "$corpus_root/$target.minimised-size" 2>/dev/null || echo 0)
    if [ "$inputs" -gt "$max_corpus" ] && [ "$inputs" -gt $(( minimised_size * 3 / 2 )) ]; then
        cmin_start=$(date +%s)
        cargo fuzz cmin --fuzz-dir tests/fuzz "${feature_args[@]}" "$target" "$corpus" -- \
            -rss_limit_mb=2048 -max_len="$max_len" -timeout=20 >"$seeds/$target.cmin.log" 2>&1 \
            || { tail -n 20 "$seeds/$target.cmin.log"; echo "fuzz: $target: corpus minimisation failed" >&2; exit 1; }
        find "$corpus" -type f | wc -l > "$corpus_root/$target.minimised-size"
        echo "fuzz: $target: corpus minimised from $inputs to $(cat "$corpus_root/$target.minimised-size") inputs in $(( $(date +%s) - cmin_start )) s"
    fi
    log="$seeds/$target.log"
    touch "$seeds/$target.started"
    if cargo fuzz run --fuzz-dir tests/fuzz "${feature_args[@]}" "$target" \
        "$corpus" "$seeds/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len="$max_len" -timeout=20 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E '(INITED|^Done |^stat::number_of_executed_units|^stat::peak_rss_mb)' "$log" || true
        grep -E 'exec/s' "$log" | tail -n 1 || true
        echo "fuzz: $target: no crash"
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
done
exit $status
