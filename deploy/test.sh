#!/usr/bin/env bash
# Installs what is missing (deploy/setup.sh), then runs the whole test suite. Tests start their
# own Apache Kafka brokers (deploy/broker.sh) on free loopback ports and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
deploy/setup.sh --python
cargo test --workspace "$@"
