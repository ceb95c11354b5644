#!/usr/bin/env bash
# Installs what is missing (deploy/setup.sh), then runs the whole test suite. Tests start their
# own Apache Kafka brokers (deploy/broker.sh) on free loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# A one-off build (CI, a fresh clone) gains nothing from incremental caches, which would double
# the target folder's size on disk.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi
deploy/setup.sh --spark
cargo test --workspace "$@"
