#!/usr/bin/env bash
# README command 2: install prerequisites, then run every test (unit + integration against the
# local stack: moto, Dovecot and the in-process stand-ins, all on 127.0.0.1).
# Extra arguments go to `cargo test` (e.g. `bash infra/scripts/test.sh -p mailbridge-tests`).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash infra/scripts/install-prerequisites.sh
# the Lambda bootstraps that the integration tests run as real processes (through the Runtime
# API emulator); the tests would build them on demand, this just does it up front
cargo build --workspace --bins -q
cargo test --workspace --no-fail-fast "$@"
