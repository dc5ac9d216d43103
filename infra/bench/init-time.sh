#!/usr/bin/env bash
# Init time of each Lambda bootstrap vs a hello-world lambda_runtime floor.
#
#   bash infra/bench/init-time.sh                          # release profile (deployed), 20 starts each
#   bash infra/bench/init-time.sh --profile bench --starts 30
#   bash infra/bench/init-time.sh --bins-dir DIR           # already-built hello-lambda, send-notifications, poll-mailboxes
#   bash infra/bench/init-time.sh --before DIR             # also start DIR's two bootstraps (before/after, same run)
#
# Builds send-notifications, poll-mailboxes and infra/bench/hello-lambda with the same profile,
# starts moto, then starts each binary N times (interleaved) under the Lambda Runtime API emulator
# and prints median / p90 / min of spawn → first /next, CPU time and RSS in init, and the AWS
# requests made in init. Needs the local-stack prerequisites (moto venv):
# bash infra/scripts/install-prerequisites.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'); $(date -u '+%Y-%m-%d %H:%M UTC'); load $(cut -d' ' -f1-3 /proc/loadavg)"
exec cargo run -q -p mailbridge-local-stack --bin bench-init -- "$@"
