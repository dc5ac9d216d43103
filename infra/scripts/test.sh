#!/usr/bin/env bash
# README command 2: install prerequisites, then run every test (unit + integration against the local stack).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash infra/scripts/install-prerequisites.sh
cargo test --workspace --no-fail-fast "$@"
