#!/usr/bin/env bash
# Installs what the local stack needs on a Debian machine that has only the Rust toolchain and
# Python 3: Dovecot (IMAP server, from Debian) and a project virtualenv with moto (AWS stand-in).
# Idempotent: a second run only checks. Run as root or with sudo available.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${MAILBRIDGE_VENV:-$root/.local/venv}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_pkgs=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || apt_pkgs+=(dovecot-imapd)
command -v openssl >/dev/null 2>&1 || apt_pkgs+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_pkgs+=(python3-venv)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${apt_pkgs[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/moto_server" ]; then
  echo "creating $venv with moto[server]"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/infra/requirements.txt"
fi
echo "prerequisites ready: dovecot $(/usr/sbin/dovecot --version | cut -d' ' -f1), moto in $venv"
