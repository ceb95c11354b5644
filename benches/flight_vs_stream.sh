#!/usr/bin/env bash
# Arrow Flight DoExchange against the streaming path, on the same executor and its warm workers:
# a query with one executor of one core embeds N texts from Kafka, then `embedstream embed
# --flight` sends the same N texts to that executor twice. Prints both rates; their ratio is the
# figure (the stream's time is its batch time: Kafka read, inference and acknowledged writes).
#   benches/flight_vs_stream.sh [N] [BINARY]   default 1000 texts, target/release/embedstream
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
B=$(realpath "${2:-target/release/embedstream}")
CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
W=$(mktemp -d /tmp/embedstream-flight-bench.XXXXXX)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
deploy/broker.sh start "$PORT" "$W/broker" >/dev/null 2>&1
Q=
trap '[ -n "$Q" ] && kill "$Q" 2>/dev/null; deploy/broker.sh stop "$W/broker" >/dev/null; rm -rf "$W"' EXIT
python3 -I deploy/demo/sample_texts.py "$N" >"$W/texts.txt"
"$B" produce --bootstrap-servers "127.0.0.1:$PORT" --topic products --partitions 2 --keyed <"$W/texts.txt" 2>/dev/null
sed -e "s|@BOOTSTRAP@|127.0.0.1:$PORT|g" -e "s|@WORK@|$W|g" -e "s|@MODELS@|$CACHE/models|g" \
  -e 's|^available_now = true|processing_time = "1s"|' -e "s|^max_offsets_per_trigger = 1000|max_offsets_per_trigger = $N|" \
  deploy/demo/job.toml >"$W/job.toml"
"$B" run "$W/job.toml" --local 1 >/dev/null 2>"$W/run.log" &
Q=$!
rows() { "$B" progress "$W/job.toml" --json 2>/dev/null | python3 -c 'import sys, json; print(sum(json.loads(l)["numInputRows"] for l in sys.stdin))'; }
until [ "$(rows)" -ge "$N" ]; do
  kill -0 "$Q" || { cat "$W/run.log"; exit 1; }
  sleep 0.5
done
python3 - "$W/checkpoint/progress.jsonl" <<'PY'
import json, sys
records = [json.loads(l) for l in open(sys.argv[1])]
rows = sum(r["numInputRows"] for r in records)
ms = sum(r["durationMs"]["triggerExecution"] for r in records)
print(f"stream: {rows} texts in {ms / 1000:.2f} s of batch time = {rows / ms * 1000:.1f}/s")
PY
ADDR=$(python3 -c 'import json, sys; print(next(t["labels"]["flight_address"] for t in json.load(open(sys.argv[1])) if "flight_address" in t["labels"]))' "$W/checkpoint/monitoring/targets.json")
for run in 1 2; do
  start=$(date +%s.%N)
  "$B" embed --flight "$ADDR" <"$W/texts.txt" 2>/dev/null >"$W/flight.jsonl"
  end=$(date +%s.%N)
  test "$(wc -l <"$W/flight.jsonl")" -eq "$N"
  python3 -c "print(f'flight, run $run: $N texts in {$end - $start:.2f} s = {$N / ($end - $start):.1f}/s')"
done
