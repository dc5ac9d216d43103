#!/usr/bin/env bash
# README command 2: install prerequisites, then run every test (unit + integration against the
# local stack: moto, Dovecot, Request Tracker, django-helpdesk and the in-process stand-ins, all
# on 127.0.0.1) with cargo nextest: each test in its own process under the time limit of
# .config/nextest.toml, so one hang fails that test instead of the whole run.
# Extra arguments go to `cargo nextest run` (e.g. `bash infra/scripts/test.sh -p mailbridge-tests`).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash infra/scripts/install-prerequisites.sh
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (crates.io, once)"
  cargo install --locked cargo-nextest
fi
# the Lambda bootstraps that the integration tests run as real processes (through the Runtime
# API emulator): built here, before the tests (a test never runs cargo; a missing binary fails
# naming this command)
cargo build --workspace --bins -q
# nextest does not run doc tests: compile and run them too (only for a whole-workspace run),
# first, so the run ends with nextest's summary of the whole suite
if [ $# -eq 0 ]; then
  cargo test --workspace --doc -q
fi
cargo nextest run --workspace "$@"
