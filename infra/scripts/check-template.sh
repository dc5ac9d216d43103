#!/usr/bin/env bash
# Offline checks of the SAM template (template.yaml), run by CI before the tests:
#   cfn-lint template.yaml
#   sam validate --lint --region us-east-1          (no AWS credentials or network needed)
#   checkov -f template.yaml                        (every skipped check carries its reason in the template)
# The tools live in two virtualenvs under .local/venv-deploy/ (aws-sam-cli pins a boto3 that checkov's
# pins conflict with, so they cannot share one). The first run installs them from PyPI (about 2.5 min,
# 630 MB); later runs only check the pinned versions and take about 15 s.
# `--install-sam-only` installs (or checks) just the SAM CLI venv and exits (used by sam-local.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venvs=${MAILBRIDGE_DEPLOY_VENV:-$root/.local/venv-deploy}
sam_pins=(aws-sam-cli==1.170.0 cfn-lint==1.58.0)
checkov_pins=(checkov==3.3.30)

# ensure_venv DIR MARKER PIN... : create DIR with exactly these pins unless MARKER records them already.
ensure_venv() {
  local dir=$1 marker=$2; shift 2
  local want="$*"
  if [ -x "$dir/bin/python" ] && [ -f "$dir/$marker" ] && [ "$(cat "$dir/$marker")" = "$want" ]; then
    return
  fi
  echo "== installing $want into $dir (one-time)"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check "$@"
  echo "$want" > "$dir/$marker"
}
ensure_venv "$venvs/sam" .mailbridge-pins "${sam_pins[@]}"
[ "${1:-}" != --install-sam-only ] || exit 0
ensure_venv "$venvs/checkov" .mailbridge-pins "${checkov_pins[@]}"

export SAM_CLI_TELEMETRY=0
# checkov would try to download guidelines from its vendor's API; this machine (and CI) is offline.
export BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

echo "== cfn-lint template.yaml"
"$venvs/sam/bin/cfn-lint" template.yaml

echo "== sam validate --lint"
"$venvs/sam/bin/sam" validate --lint --region us-east-1 --template-file template.yaml

echo "== checkov -f template.yaml"
"$venvs/checkov/bin/checkov" -f template.yaml --framework cloudformation --skip-download --compact --quiet

echo "== template checks passed"
