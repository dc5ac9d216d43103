#!/usr/bin/env bash
# Builds the Lambda bootstraps for provided.al2023 with cargo-lambda (zig as the cross linker):
#   target/lambda-<arch>/{send-notifications,poll-mailboxes,receive-notifications}/bootstrap
# (under $CARGO_TARGET_DIR when it is set) and prints their sizes.
#
#   bash infra/scripts/build-lambdas.sh            # arm64 (what template.yaml deploys), x86_64 if arm64 is impossible
#   bash infra/scripts/build-lambdas.sh --x86-64   # x86_64 only
#
# cargo-lambda and ziglang come from PyPI into .local/venv-lambda (one-time, ~15 s). arm64 needs the
# Rust standard library for aarch64-unknown-linux-gnu (`rustup target add`, downloaded from the Rust
# project's servers). When that cannot be installed, the script says so and builds x86_64 instead; then
# deploy with `Architectures: [x86_64]` in template.yaml, or build on a machine that has the target.
# A release build of the AWS SDK takes minutes (fat LTO, codegen-units = 1); CI does not run this.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
venv=${MAILBRIDGE_LAMBDA_VENV:-$root/.local/venv-lambda}
pins=(cargo-lambda==1.9.2 ziglang==0.17.1)
bins=(send-notifications poll-mailboxes receive-notifications)

arch=arm64
case "${1:-}" in
  "") ;;
  --x86-64|--x86_64) arch=x86_64 ;;
  --arm64) arch=arm64 ;;
  *) echo "usage: $0 [--arm64|--x86-64]" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/cargo-lambda" ] || [ "$(cat "$venv/.mailbridge-pins" 2>/dev/null)" != "${pins[*]}" ]; then
  echo "== installing ${pins[*]} into $venv (one-time)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[@]}"
  echo "${pins[*]}" > "$venv/.mailbridge-pins"
fi
# cargo finds the `cargo-lambda` subcommand on PATH, and cargo-lambda finds zig via this venv's python.
export PATH="$venv/bin:$PATH"

if [ "$arch" = arm64 ]; then
  if ! rustc --print target-libdir --target aarch64-unknown-linux-gnu >/dev/null 2>&1 \
     || [ ! -d "$(rustc --print target-libdir --target aarch64-unknown-linux-gnu)" ]; then
    echo "== adding the aarch64-unknown-linux-gnu standard library (rustup target add)"
    if ! command -v rustup >/dev/null 2>&1 || ! timeout 300 rustup target add aarch64-unknown-linux-gnu; then
      echo "!! cannot install the Rust standard library for aarch64-unknown-linux-gnu here (no rustup, or its"
      echo "!! download server is unreachable). Falling back to an x86_64 build. template.yaml deploys arm64:"
      echo "!! set Architectures: [x86_64] for these binaries, or build on a machine with the aarch64 target."
      arch=x86_64
    fi
  fi
fi

target_dir=${CARGO_TARGET_DIR:-$root/target}
lambda_dir="$target_dir/lambda-$arch"
arch_flag=--arm64; [ "$arch" = x86_64 ] && arch_flag=--x86-64
# `-p` for each function: without it cargo resolves features for the whole workspace, so the operator CLI's
# (aws-config `sso`, `credentials-process`) and the local stack's (hyper `server`, ...) would be built into
# the bootstraps. With it, the feature set is exactly what `sam build` resolves for each member on its own,
# so `sam build` afterwards finds every unit in the cache (see BENCHMARKS.md, binary-size).
bin_flags=(); for b in "${bins[@]}"; do bin_flags+=(-p "$b" --bin "$b"); done

echo "== cargo lambda build --release $arch_flag ${bin_flags[*]} --lambda-dir $lambda_dir"
start=$(date +%s)
cargo lambda build --release "$arch_flag" "${bin_flags[@]}" --lambda-dir "$lambda_dir"
echo "== built in $(( $(date +%s) - start )) s ($arch, $(date -u +%Y-%m-%dT%H:%MZ))"

status=0
for b in "${bins[@]}"; do
  f="$lambda_dir/$b/bootstrap"
  if [ ! -f "$f" ]; then echo "!! missing $f" >&2; status=1; continue; fi
  bytes=$(stat -c %s "$f")
  zipped=$(python3 - "$f" <<'PY'
import io, sys, zipfile
buf = io.BytesIO()
with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    z.write(sys.argv[1], "bootstrap")
print(len(buf.getvalue()))
PY
)
  printf '%-20s %s  %6.2f MiB (%d bytes), zipped %6.2f MiB  [%s]\n' "$b" "$arch" \
    "$(awk -v b="$bytes" 'BEGIN{print b/1048576}')" "$bytes" "$(awk -v b="$zipped" 'BEGIN{print b/1048576}')" \
    "$(file -b "$f" 2>/dev/null | cut -d, -f1-2)"
  if [ "$bytes" -gt $((10 * 1024 * 1024)) ]; then echo "!! $b is over the 10 MiB target" >&2; fi
done
exit $status
