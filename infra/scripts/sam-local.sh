#!/usr/bin/env bash
# Runs the functions with the real SAM CLI and AWS's Runtime Interface Emulator in Docker
# (`sam local invoke`, `sam local start-lambda`), against the local stack or real AWS.
#
#   bash infra/scripts/sam-local.sh invoke <Function> [-e EVENT] [options] [-- more sam args]
#   bash infra/scripts/sam-local.sh start-lambda [options] [-- more sam args]
#   bash infra/scripts/sam-local.sh prepare [options]     (everything but running SAM)
#
#   <Function>        SendNotificationsFunction | PollMailboxesFunction (or send-notifications,
#                     poll-mailboxes); EVENT defaults to infra/events/sqs-notification-batch.json
#                     and infra/events/poll-schedule.json
#   --env-vars FILE   the functions' variables (SAM's format, {"Function": {"VAR": "value"}});
#                     default: taken from this shell, i.e. the `export` lines `local-stack start`
#                     prints
#   --release         run release bootstraps (infra/scripts/build-lambdas.sh --x86-64; a cold
#                     fat-LTO build takes 15-25 min); default: `cargo build --workspace --bins`
#   --bootstraps DIR  run the bootstraps in DIR (DIR/<name> or DIR/<name>/bootstrap), no build
#   --base-image auto|public|local
#                     public: AWS's public.ecr.aws/lambda/provided:al2023-x86_64 (pulled by SAM);
#                     local: a Debian bookworm base built here once with debootstrap (offline);
#                     auto (default): public when present or pullable, else local
#   --work DIR        where the template copy, env file and code folders go (.local/sam-local)
#
# Docker: a running daemon (DOCKER_HOST or the default socket) is used as it is. Otherwise
# Debian's dockerd (package docker.io, installed by install-prerequisites.sh) is started here,
# as root, with no bridge network and no iptables rules (--bridge=none --iptables=false), its
# socket in /run/mailbridge-docker and its images in $MAILBRIDGE_DOCKER_DATA (default
# .local/docker), and stopped again when the last sam-local run using it ends. Every function
# container runs on the host's network, so all traffic stays on 127.0.0.1 (see sam_local.py).
# Tools: SAM CLI in the deploy venv of check-template.sh ($MAILBRIDGE_DEPLOY_VENV).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

die() { echo "sam-local: $*" >&2; exit 2; }
say() { echo "== $*" >&2; }

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
command=$1; shift
function=""
case "$command" in
  invoke)
    [ $# -ge 1 ] || usage
    case "$1" in
      SendNotificationsFunction|send-notifications) function=SendNotificationsFunction ;;
      PollMailboxesFunction|poll-mailboxes) function=PollMailboxesFunction ;;
      *) die "unknown function $1 (SendNotificationsFunction or PollMailboxesFunction)" ;;
    esac
    shift ;;
  start-lambda|prepare) ;;
  -h|--help|help) usage ;;
  *) die "unknown command $command (invoke, start-lambda or prepare)" ;;
esac

event="" env_vars="" build=debug bootstraps="" base_image=auto work="$root/.local/sam-local"
sam_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    -e|--event) event=$2; shift 2 ;;
    --env-vars) env_vars=$2; shift 2 ;;
    --release) build=release; shift ;;
    --bootstraps) bootstraps=$2; build=none; shift 2 ;;
    --base-image) base_image=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --) shift; sam_args+=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
case "$base_image" in auto|public|local) ;; *) die "--base-image must be auto, public or local" ;; esac
if [ -z "$event" ]; then
  case "$function" in
    SendNotificationsFunction) event=infra/events/sqs-notification-batch.json ;;
    PollMailboxesFunction) event=infra/events/poll-schedule.json ;;
  esac
fi
[ -z "$event" ] || [ -f "$event" ] || die "event file $event does not exist"
[ -z "$env_vars" ] || [ -f "$env_vars" ] || die "env file $env_vars does not exist"

public_image=public.ecr.aws/lambda/provided:al2023-x86_64
local_image=mailbridge/sam-local-base:bookworm
install_hint="run \`bash infra/scripts/install-prerequisites.sh\` (installs Debian's docker.io and debootstrap), or install Docker"

# ---------------------------------------------------------------- SAM CLI
bash infra/scripts/check-template.sh --install-sam-only >&2
venvs=${MAILBRIDGE_DEPLOY_VENV:-$root/.local/venv-deploy}
sam_python="$venvs/sam/bin/python"
[ -x "$sam_python" ] || die "the SAM CLI is missing from $venvs/sam"
export SAM_CLI_TELEMETRY=0

# ---------------------------------------------------------------- Docker
command -v docker >/dev/null 2>&1 || die "the docker command is missing: $install_hint"
own_dir=/run/mailbridge-docker
own_socket="unix://$own_dir/docker.sock"
docker_up() { timeout 20 docker info >/dev/null 2>&1; }
started_daemon=no
if docker_up; then
  say "Docker: using the running daemon (${DOCKER_HOST:-default socket})"
else
  command -v dockerd >/dev/null 2>&1 || die "no Docker daemon is running and dockerd is not installed: $install_hint"
  [ "$(id -u)" = 0 ] || die "no Docker daemon is running; start one (e.g. sudo systemctl start docker) or run this as root to start Debian's dockerd"
  mkdir -p "$own_dir"
  export DOCKER_HOST=$own_socket
  # One daemon for all concurrent sam-local runs: start.lock serialises starting and stopping,
  # every run holds users.lock shared while it uses the daemon, and the last one out stops it.
  exec 8>"$own_dir/users.lock" 9>"$own_dir/start.lock"
  flock -x 9
  if ! docker_up; then
    data_root=${MAILBRIDGE_DOCKER_DATA:-$root/.local/docker}
    mkdir -p "$data_root"
    # a pid file left by a dockerd that was killed: dockerd refuses to start if its pid was reused
    old_pid=$(cat "$own_dir/dockerd.pid" 2>/dev/null || true)
    if [ -n "$old_pid" ] && ! grep -qsx dockerd "/proc/$old_pid/comm"; then rm -f "$own_dir/dockerd.pid"; fi
    say "Docker: starting dockerd (no bridge network, no iptables; images in $data_root)"
    dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
      --data-root "$data_root" --exec-root "$own_dir/exec" --pidfile "$own_dir/dockerd.pid" \
      --host "$own_socket" >"$own_dir/dockerd.log" 2>&1 &
    for _ in $(seq 1 120); do docker_up && break; sleep 0.5; done
    docker_up || { tail -20 "$own_dir/dockerd.log" >&2; die "dockerd did not start (log: $own_dir/dockerd.log)"; }
    started_daemon=yes
  else
    say "Docker: using the daemon another sam-local run started ($own_socket)"
  fi
  flock -s 8
  flock -u 9
  stop_own_daemon() {
    flock -x 9
    # Still used by another run (it holds users.lock shared)? Then that run stops it.
    if flock -x -n 8; then
      local pid
      pid=$(cat "$own_dir/dockerd.pid" 2>/dev/null || true)
      if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      fi
    fi
    flock -u 9
  }
  trap stop_own_daemon EXIT
fi

# ---------------------------------------------------------------- base image
has_image() { docker image inspect "$1" >/dev/null 2>&1; }
build_local_image() {
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap is missing (needed to build the base image offline): $install_hint"
  [ "$(id -u)" = 0 ] || die "building the base image with debootstrap needs root"
  local rootfs
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/mailbridge-sam-base.XXXXXX")
  say "building $local_image: debootstrap bookworm (minbase + ca-certificates) from ${MAILBRIDGE_DEBIAN_MIRROR:-the default Debian mirror of debootstrap}, once"
  local start=$SECONDS
  # no mirror argument: debootstrap's default Debian mirror, unless MAILBRIDGE_DEBIAN_MIRROR names one
  if ! debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" \
      ${MAILBRIDGE_DEBIAN_MIRROR:+"$MAILBRIDGE_DEBIAN_MIRROR"} >"$rootfs.log" 2>&1; then
    tail -20 "$rootfs.log" >&2; rm -rf "$rootfs"
    die "debootstrap failed (log: $rootfs.log)"
  fi
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/locale
  tar -C "$rootfs" -c . | docker import \
    --message "mailbridge sam local base: Debian bookworm minbase with ca-certificates" - "$local_image" >/dev/null
  rm -rf "$rootfs" "$rootfs.log"
  say "built $local_image in $(( SECONDS - start )) s"
}
image_args=()
use_local() { has_image "$local_image" || build_local_image; image_args=(--invoke-image "$local_image" --skip-pull-image); }
case "$base_image" in
  public) ;;
  local) use_local ;;
  auto)
    if has_image "$public_image"; then :
    elif has_image "$local_image"; then use_local
    elif timeout 300 docker pull -q "$public_image" >/dev/null 2>&1; then say "pulled $public_image"
    else say "$public_image cannot be pulled (offline?): using a local base image"; use_local
    fi ;;
esac

# ---------------------------------------------------------------- bootstraps
target_dir=${CARGO_TARGET_DIR:-$root/target}
case "$build" in
  debug)
    say "cargo build --workspace --bins"
    cargo build --workspace --bins -q >&2
    bootstraps=$target_dir/debug ;;
  release)
    bash infra/scripts/build-lambdas.sh --x86-64 >&2
    bootstraps=$target_dir/lambda-x86_64 ;;
esac
bootstrap_of() {
  if [ -f "$bootstraps/$1/bootstrap" ]; then echo "$bootstraps/$1/bootstrap"
  elif [ -f "$bootstraps/$1" ]; then echo "$bootstraps/$1"
  else die "no bootstrap for $1 in $bootstraps ($bootstraps/$1 or $bootstraps/$1/bootstrap)"
  fi
}

# ---------------------------------------------------------------- template copy, env file
prepare_args=(prepare --template "$root/template.yaml" --work "$work"
  --code "SendNotificationsFunction=$(bootstrap_of send-notifications)"
  --code "PollMailboxesFunction=$(bootstrap_of poll-mailboxes)")
[ -z "$env_vars" ] || prepare_args+=(--env-vars "$env_vars")
"$sam_python" infra/scripts/sam_local.py "${prepare_args[@]}"
say "template copy $work/template.yaml, env file $work/env.json"

say "ready in $SECONDS s"
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-us-east-1}}
common=(--template-file "$work/template.yaml" --env-vars "$work/env.json" --region "$region" "${image_args[@]}")
case "$command" in
  prepare) exit 0 ;;
  invoke) "$sam_python" infra/scripts/sam_local.py sam local invoke "$function" --event "$event" "${common[@]}" "${sam_args[@]}" ;;
  start-lambda) "$sam_python" infra/scripts/sam_local.py sam local start-lambda --host 127.0.0.1 "${common[@]}" "${sam_args[@]}" ;;
esac
