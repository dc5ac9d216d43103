#!/usr/bin/env bash
# README command 1: install prerequisites, then run the whole loop on the local stack.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash infra/scripts/install-prerequisites.sh
cargo run -q -p mailbridge-local-stack --bin local-stack -- demo "$@"
