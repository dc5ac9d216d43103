#!/usr/bin/env bash
# Installs what the local stack needs on a Debian/Ubuntu machine that has only the Rust toolchain
# and Python 3:
#   - Debian packages: dovecot-imapd (IMAP server; brings dovecot-core with doveadm), and only if
#     missing: python3-venv (for the venv), ca-certificates (for pip's downloads), docker.io (the
#     container runtime of `sam local invoke`; skipped when a Docker daemon runs or dockerd is
#     installed) and debootstrap (builds sam-local's base image when AWS's cannot be pulled)
#   - Request Tracker 5 (the helpdesk the RT ticket-sink tests land on), only if missing:
#     request-tracker5, rt5-db-sqlite, rt5-standalone (rt-server with Starlet) and dma (the MTA
#     request-tracker5 needs; runs no daemon), preseeded so apt asks nothing. Its packaged service is
#     a no-op and no web server starts: the tests run throwaway instances (own SQLite file and port)
#   - a project virtualenv <repo>/.local/venv (or $MAILBRIDGE_VENV) with moto[server] from
#     infra/requirements.txt (the AWS stand-in: SQS, Secrets Manager, DynamoDB)
#   - a second virtualenv <repo>/.local/venv-helpdesk (or $MAILBRIDGE_HELPDESK_VENV) with
#     django-helpdesk from infra/requirements-helpdesk.txt (the real helpdesk the django-helpdesk
#     ticket sink is tested against; its own venv so its pins never move moto's)
# Idempotent: a second run only checks (a venv is rebuilt when its requirements file changes).
# apt-get needs root: run as root or with sudo available. Nothing is started as a system service:
# if the packages start Dovecot's or Docker's system service, it is stopped and disabled again (the
# tests run their own throwaway Dovecot instances on free ports; infra/scripts/sam-local.sh starts
# dockerd, without a bridge network, when it needs one).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${MAILBRIDGE_VENV:-$root/.local/venv}
helpdesk_venv=${MAILBRIDGE_HELPDESK_VENV:-$root/.local/venv-helpdesk}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else echo "need root (or sudo) to run: $*" >&2; exit 1
  fi
}

command -v python3 >/dev/null 2>&1 || { echo "python3 is required (apt-get install python3)" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || { echo "the Rust toolchain (cargo) is required: https://rustup.rs" >&2; exit 1; }

apt_pkgs=()
had_dovecot=yes
if [ ! -x /usr/sbin/dovecot ] || [ ! -x /usr/bin/doveadm ]; then
  apt_pkgs+=(dovecot-imapd)
  had_dovecot=no
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_pkgs+=(python3-venv)
[ -e /etc/ssl/certs/ca-certificates.crt ] || apt_pkgs+=(ca-certificates)
had_docker=yes
if ! command -v dockerd >/dev/null 2>&1 && ! timeout 10 docker info >/dev/null 2>&1; then
  apt_pkgs+=(docker.io)
  had_docker=no
fi
command -v debootstrap >/dev/null 2>&1 || apt_pkgs+=(debootstrap)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${apt_pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi
# Request Tracker 5: about 20 s and 230 MiB the first time. The global instance debconf sets up is
# never used (each test instance gets its own RT_SITE_CONFIG and SQLite file); the preseed only
# keeps apt from asking.
if [ ! -x /usr/sbin/rt-setup-database-5 ] || [ ! -x /usr/share/request-tracker5/libexec/rt-server ] \
   || ! perl -MDBD::SQLite -e1 >/dev/null 2>&1 || ! perl -MStarlet::Server -e1 >/dev/null 2>&1; then
  echo "installing Request Tracker 5 (request-tracker5 rt5-db-sqlite rt5-standalone dma)"
  as_root debconf-set-selections <<'PRESEED'
request-tracker5 request-tracker5/rtname string mailbridge.test
request-tracker5 request-tracker5/organization string mailbridge.test
request-tracker5 request-tracker5/correspondaddress string rt@mailbridge.test
request-tracker5 request-tracker5/commentaddress string rt-comment@mailbridge.test
request-tracker5 request-tracker5/webbaseurl string http://127.0.0.1
request-tracker5 request-tracker5/webpath string /rt
request-tracker5 request-tracker5/handle-siteconfig-permissions boolean true
request-tracker5 request-tracker5/install-cronjobs boolean false
request-tracker5 request-tracker5/dbconfig-install boolean true
request-tracker5 request-tracker5/database-type select sqlite3
request-tracker5 request-tracker5/initial-root-password password not-used-by-the-tests
dma dma/mailname string mailbridge.test
dma dma/relayhost string
PRESEED
  [ ${#apt_pkgs[@]} -gt 0 ] || as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends request-tracker5 rt5-db-sqlite rt5-standalone dma >/dev/null
fi
if [ "$had_dovecot" = no ] && command -v systemctl >/dev/null 2>&1 \
   && systemctl is-active --quiet dovecot 2>/dev/null; then
  echo "stopping and disabling the system Dovecot service the package started (not needed)"
  as_root systemctl disable --now dovecot >/dev/null 2>&1 || true
fi
if [ "$had_docker" = no ] && command -v systemctl >/dev/null 2>&1 \
   && systemctl is-active --quiet docker 2>/dev/null; then
  echo "stopping and disabling the system Docker service the package started (sam-local.sh starts its own)"
  as_root systemctl disable --now docker.socket docker >/dev/null 2>&1 || true
fi

req="$root/infra/requirements.txt"
want=$(sha256sum "$req" | cut -d' ' -f1)
have=$(cat "$venv/.requirements.sha256" 2>/dev/null || true)
if [ ! -x "$venv/bin/moto_server" ] || [ "$want" != "$have" ]; then
  echo "creating $venv with $(grep -v '^#' "$req" | tr '\n' ' ')"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$venv/.requirements.sha256"
fi
req="$root/infra/requirements-helpdesk.txt"
want=$(sha256sum "$req" | cut -d' ' -f1)
have=$(cat "$helpdesk_venv/.requirements.sha256" 2>/dev/null || true)
if [ ! -x "$helpdesk_venv/bin/python" ] || [ "$want" != "$have" ]; then
  echo "creating $helpdesk_venv with django-helpdesk (infra/requirements-helpdesk.txt)"
  python3 -m venv "$helpdesk_venv"
  "$helpdesk_venv/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" > "$helpdesk_venv/.requirements.sha256"
fi
rt_version=$(dpkg-query -W -f='${Version}' request-tracker5 2>/dev/null || echo '?')
echo "prerequisites ready: dovecot $(/usr/sbin/dovecot --version | cut -d' ' -f1), request-tracker5 $rt_version, moto $("$venv/bin/python" -c 'import moto; print(moto.__version__)') in $venv, django-helpdesk $("$helpdesk_venv/bin/python" -c 'from importlib.metadata import version; print(version("django-helpdesk"))') in $helpdesk_venv"
