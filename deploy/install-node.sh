#!/usr/bin/env bash
# Installs embedstream on a node: the binary, the ONNX Runtime library and the models (from the
# cache that deploy/setup.sh filled), the systemd units and their environment file.
#
#   deploy/install-node.sh [--root DIR] [--no-systemd] [--binary PATH]
#
#   --root DIR     install below DIR instead of / (to make a package, or to look first)
#   --no-systemd   copy the units but do not create the user or run systemctl
#   --binary PATH  the embedstream binary (default target/release/embedstream)
#
# Then: edit /etc/embedstream/embedstream.env, put the cluster token in /etc/embedstream/token,
# and `systemctl enable --now embedstream-node-agent` (and embedstream-resource-manager on one node).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
root="" systemd=1 binary=target/release/embedstream
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root DIR}; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    --binary) binary=${2:?--binary PATH}; shift 2 ;;
    *) echo "usage: $0 [--root DIR] [--no-systemd] [--binary PATH]" >&2; exit 2 ;;
  esac
done
[ -x "$binary" ] || { echo "install: no binary at $binary (cargo build --release first)" >&2; exit 1; }
[ -f "$CACHE/lib/libonnxruntime.so" ] || { echo "install: run deploy/setup.sh first ($CACHE)" >&2; exit 1; }

opt="$root/opt/embedstream" etc="$root/etc/embedstream" units="$root/etc/systemd/system"
install -d "$opt/bin" "$opt/cache/lib" "$opt/cache/models" "$etc" "$units"
install -m 0755 "$binary" "$opt/bin/embedstream"
install -m 0644 "$CACHE/lib/libonnxruntime.so" "$opt/cache/lib/libonnxruntime.so"
cp -R "$CACHE/models/." "$opt/cache/models/"
install -m 0644 deploy/systemd/embedstream-resource-manager.service deploy/systemd/embedstream-node-agent.service "$units/"
# The environment file is the operator's once written.
[ -f "$etc/embedstream.env" ] || install -m 0644 deploy/systemd/embedstream.env "$etc/embedstream.env"
echo "install: embedstream in $opt, units in $units, settings in $etc/embedstream.env" >&2

if [ "$systemd" = 1 ] && [ -z "$root" ]; then
  id embedstream >/dev/null 2>&1 || useradd --system --home-dir /var/lib/embedstream --shell /usr/sbin/nologin embedstream
  systemctl daemon-reload
  echo "install: now edit $etc/embedstream.env, write the token to $etc/token (chmod 600, chown embedstream)," >&2
  echo "install: then: systemctl enable --now embedstream-node-agent" >&2
fi
