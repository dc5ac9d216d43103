#!/usr/bin/env bash
# Dependency hygiene (run by CI): no unused dependency (cargo-machete), and only permissive
# licenses, crates.io as the one source, no wildcard versions (cargo-deny, rules in deny.toml).
# Installs both tools with `cargo install --locked` when missing (pinned versions; a few minutes
# once, then reused from ~/.cargo/bin).
#
# Not run here: `cargo deny check advisories`. The RustSec advisory database is fetched from a git
# host the CI machine cannot reach; run it where that host is reachable.
set -euo pipefail
cd "$(dirname "$0")/../.."

machete_version=0.9.2
deny_version=0.20.2

have() { "$1" --version 2>/dev/null | grep -q "$2"; }
have cargo-machete "$machete_version" ||
  cargo install --locked --quiet cargo-machete --version "$machete_version"
have cargo-deny "$deny_version" ||
  cargo install --locked --quiet cargo-deny --version "$deny_version" --no-default-features

# --with-metadata reads `cargo metadata`, so renamed libraries (mailbridge-shared is `mailbridge`)
# are recognised; a dependency declared only for its features is listed under
# [package.metadata.cargo-machete] in its Cargo.toml, with the reason.
cargo machete --with-metadata
cargo deny --offline --log-level error check bans licenses sources
