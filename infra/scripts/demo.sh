#!/usr/bin/env bash
# README command 1: install prerequisites, then run the demo on the local stack (moto, Dovecot and
# the identity / Graph / ticket API stand-ins on 127.0.0.1), printing each step.
# `bash infra/scripts/demo.sh --help` lists options; `local-stack start` keeps the stack running.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
bash infra/scripts/install-prerequisites.sh
# the demo runs the real send-notifications and poll-mailboxes bootstraps, found next to local-stack
cargo build -q --workspace --bins
cargo run -q -p mailbridge-local-stack --bin local-stack -- demo "$@"
