#!/usr/bin/env bash
# Packs what a node agent in a YARN container needs into one tarball: bin/embedstream and
# cache/ (the ONNX Runtime library and the models from deploy/setup.sh's cache).
#
#   deploy/yarn/make-bundle.sh OUT.tar.gz [BINARY]      then: hdfs dfs -put OUT.tar.gz /apps/embedstream/
set -euo pipefail
out=${1:?OUT.tar.gz} binary=${2:-target/release/embedstream}
CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
[ -x "$binary" ] || { echo "no binary at $binary (cargo build --release first)" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/cache/lib"
cp "$binary" "$stage/bin/embedstream"
cp "$CACHE/lib/libonnxruntime.so" "$stage/cache/lib/"
cp -R "$CACHE/models" "$stage/cache/models"
tar -czf "$out" -C "$stage" bin cache
echo "bundle: $out ($(du -h "$out" | cut -f1))" >&2
