#!/usr/bin/env bash
# The demo: installs what is missing, starts a local Tansu broker, loads N sample texts (real
# English of mixed length), runs a job with one executor of one core, and prints a summary.
#   deploy/demo.sh [N]          default N = 2000
# EMBEDSTREAM_DEMO_DIR keeps the broker data, job spec and checkpoint there (default: a new temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
N=${1:-2000}

deploy/setup.sh
echo "demo: building embedstream (release)" >&2
cargo build --release --quiet --bin embedstream
BIN=target/release/embedstream

WORK=${EMBEDSTREAM_DEMO_DIR:-$(mktemp -d /tmp/embedstream-demo.XXXXXX)}
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
deploy/broker.sh start "$PORT" "$WORK/broker"
trap 'deploy/broker.sh stop "$WORK/broker"' EXIT

python3 -I deploy/demo/sample_texts.py "$N" >"$WORK/texts.txt"
"$BIN" produce --bootstrap-servers "127.0.0.1:$PORT" --topic products --partitions 2 --keyed <"$WORK/texts.txt"
sed -e "s|@BOOTSTRAP@|127.0.0.1:$PORT|g" -e "s|@WORK@|$WORK|g" -e "s|@MODELS@|$CACHE/models|g" \
  deploy/demo/job.toml >"$WORK/job.toml"

echo "demo: embedstream run $WORK/job.toml --local 1" >&2
"$BIN" run "$WORK/job.toml" --local 1 >"$WORK/summary.json" 2>"$WORK/run.log" || { cat "$WORK/run.log" >&2; exit 1; }

python3 - "$WORK" "$N" <<'PY'
import json, pathlib, sys
work, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
s = json.loads((work / "summary.json").read_text())
print(f"""
embedstream demo: {n} texts from topic 'products' (2 partitions) embedded with all-MiniLM-L6-v2 (int8, 384 dims)
  batches            {s['batches']}
  input rows         {s['input_rows']}
  embeddings         {s['embeddings']}  -> topic 'products-embeddings' (f32le, headers es.topic/es.partition/es.offset/es.model)
  dead letters       {s['dead_letters']}  -> topic 'products-dlq'
  task retries       {s['task_retries']}
  processing time    {s['processing_seconds']:.2f} s (first task dispatched to last batch committed)
  throughput         {s['embeddings_per_second']:.1f} embeddings/s with 1 executor of 1 core
  consumer group     embedstream-products (committed offsets = processed end offsets)
  files              {work}/job.toml, checkpoint {work}/checkpoint, driver log {work}/run.log""")
PY
