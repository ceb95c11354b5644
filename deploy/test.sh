#!/usr/bin/env bash
# Installs what is missing (deploy/setup.sh), then runs the whole test suite. Tests start their
# own Tansu broker on a free loopback port and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
deploy/setup.sh --python
cargo test --workspace "$@"
