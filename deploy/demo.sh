#!/usr/bin/env bash
# The demo: installs what is missing, starts a local Apache Kafka broker, loads N sample texts (real
# English of mixed length), runs a job with one executor of one core, and prints a summary.
#   deploy/demo.sh [N]            default N = 2000
#   deploy/demo.sh --observe [N]  the same query kept running, with Prometheus on loopback scraping
#                                 it; prints their URLs and runs until Ctrl-C
#   deploy/demo.sh --products [N] product records (JSON: title, description, image URL; default
#                                 N = 300) through a text model, an image model (EfficientNet-Lite0
#                                 on clip art served on loopback) and their combination, into a
#                                 Parquet table
#   deploy/demo.sh --pgvector [N] the texts into PostgreSQL with pgvector (deploy/postgres.sh, on
#                                 loopback), then a nearest-neighbour query in SQL
# EMBEDSTREAM_DEMO_DIR keeps the broker data, job spec and checkpoint there (default: a new temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
CACHE="${EMBEDSTREAM_CACHE:-$HOME/.cache/embedstream}"
OBSERVE=0
PRODUCTS=0
PGVECTOR=0
if [ "${1:-}" = "--observe" ]; then OBSERVE=1; shift; fi
if [ "${1:-}" = "--products" ]; then PRODUCTS=1; shift; fi
if [ "${1:-}" = "--pgvector" ]; then PGVECTOR=1; shift; fi
N=${1:-$([ "$PRODUCTS" = 1 ] && echo 300 || echo 2000)}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

if [ "$PRODUCTS" = 1 ]; then deploy/setup.sh --python; else deploy/setup.sh; fi
echo "demo: building embedstream (release)" >&2
cargo build --release --quiet --bin embedstream
BIN=target/release/embedstream

WORK=${EMBEDSTREAM_DEMO_DIR:-$(mktemp -d /tmp/embedstream-demo.XXXXXX)}
mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
PORT=$(free_port)
deploy/broker.sh start "$PORT" "$WORK/broker"
trap 'deploy/broker.sh stop "$WORK/broker"' EXIT

if [ "$PRODUCTS" = 1 ]; then
  # The image host: the records' pictures, served over HTTP on loopback.
  IMAGES=$(free_port)
  python3 -I deploy/demo/products.py "$N" "$WORK/images" "http://127.0.0.1:$IMAGES" >"$WORK/products.jsonl"
  python3 -I deploy/demo/products.py serve "$WORK/images" "$IMAGES" >"$WORK/images.log" 2>&1 &
  HOST=$!
  trap 'kill $HOST 2>/dev/null; deploy/broker.sh stop "$WORK/broker"' EXIT
  "$BIN" produce --bootstrap-servers "127.0.0.1:$PORT" --topic products --partitions 2 --keyed <"$WORK/products.jsonl"
  sed -e "s|@BOOTSTRAP@|127.0.0.1:$PORT|g" -e "s|@WORK@|$WORK|g" -e "s|@MODELS@|$CACHE/models|g" \
    deploy/demo/products.toml >"$WORK/job.toml"
  echo "demo: embedstream run $WORK/job.toml --local 1" >&2
  "$BIN" run "$WORK/job.toml" --local 1 >"$WORK/summary.json" 2>"$WORK/run.log" || { cat "$WORK/run.log" >&2; exit 1; }
  "$CACHE/pyenv/bin/python" - "$WORK" "$N" <<'PY'
import json, pathlib, sys
import numpy as np
import pyarrow.parquet as pq
work, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
s = json.loads((work / "summary.json").read_text())
table = pq.read_table(work / "product-vectors", columns=["value", "embedding_text", "embedding_image", "embedding_product"])
folders = [json.loads(v)["title"].rsplit("(", 1)[1].rstrip(")") for v in table.column("value").to_pylist()]
image = np.array(table.column("embedding_image").to_pylist(), dtype=np.float32)
image /= np.linalg.norm(image, axis=1, keepdims=True)
# For each picture, the folder of its nearest other picture by the image vectors.
sims = image @ image.T
np.fill_diagonal(sims, -1)
same = np.mean([folders[i] == folders[j] for i, j in enumerate(sims.argmax(axis=1))])
print(f"""
embedstream demo: {n} products from topic 'products' (2 partitions): a text model, an image model and their combination
  batches            {s['batches']}
  embeddings         {s['embeddings']} records, each with 3 vectors -> Parquet {work}/product-vectors
                     embedding_text (all-MiniLM-L6-v2, 384), embedding_image (EfficientNet-Lite0, 1280),
                     embedding_product (both, concatenated and normalised, 1664)
  dead letters       {s['dead_letters']}  -> topic 'products-dlq'
  processing time    {s['processing_seconds']:.2f} s ({s['embeddings'] / max(s['processing_seconds'], 1e-9):.1f} products/s, 1 executor of 2 cores)
  images             clip art of {len(set(folders))} openclipart folders, served on loopback;
                     {same:.0%} of pictures have as nearest neighbour (by image vector) one of their own folder
  files              {work}/job.toml, checkpoint {work}/checkpoint, driver log {work}/run.log""")
PY
  exit 0
fi

python3 -I deploy/demo/sample_texts.py "$N" >"$WORK/texts.txt"
"$BIN" produce --bootstrap-servers "127.0.0.1:$PORT" --topic products --partitions 2 --keyed <"$WORK/texts.txt"

if [ "$PGVECTOR" = 1 ]; then
  PGPORT=$(free_port)
  # As root the server runs as its own user, which must pass through the demo's folder (not list it).
  chmod o+x "$WORK"
  # A password made for this demo, in a file only this user reads: the spec names the file.
  (umask 077 && python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >"$WORK/pg.pass")
  deploy/postgres.sh start "$WORK/postgres" "$PGPORT" "$WORK/pg.pass"
  trap 'deploy/postgres.sh stop "$WORK/postgres"; deploy/broker.sh stop "$WORK/broker"' EXIT
  sed -e "s|@BOOTSTRAP@|127.0.0.1:$PORT|g" -e "s|@WORK@|$WORK|g" -e "s|@MODELS@|$CACHE/models|g" \
    -e "s|@PGPORT@|$PGPORT|g" deploy/demo/pgvector.toml >"$WORK/job.toml"
  echo "demo: embedstream run $WORK/job.toml --local 1" >&2
  "$BIN" run "$WORK/job.toml" --local 1 >"$WORK/summary.json" 2>"$WORK/run.log" || { cat "$WORK/run.log" >&2; exit 1; }
  sql() { deploy/postgres.sh psql "$WORK/postgres" "$PGPORT" "$WORK/pg.pass" "$@"; }
  ROWS=$(sql "SELECT count(*) FROM products_embeddings")
  OFFSETS=$(sql "SELECT string_agg(topic || '-' || partition || ': ' || end_offset, ', ' ORDER BY partition) FROM embedstream_offsets WHERE query = 'products'")
  # The first text's nearest neighbours, by cosine distance over the HNSW index.
  NEAREST=$(sql "SELECT round((b.embedding <=> a.embedding)::numeric, 3) || '  ' || left(b.value, 70) FROM products_embeddings a, products_embeddings b WHERE a.key = (SELECT min(key) FROM products_embeddings) ORDER BY b.embedding <=> a.embedding LIMIT 4")
  python3 - "$WORK" "$N" "$ROWS" "$OFFSETS" "$PGPORT" "$NEAREST" <<'PY'
import json, pathlib, sys
work, n, rows, offsets, port, nearest = pathlib.Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
s = json.loads((work / "summary.json").read_text())
near = "\n".join("                     " + line for line in nearest.splitlines())
print(f"""
embedstream demo: {n} texts from topic 'products' (2 partitions) embedded with all-MiniLM-L6-v2 into PostgreSQL + pgvector
  embeddings         {s['embeddings']}  -> table products_embeddings on 127.0.0.1:{port} ({rows} rows, one per key; HNSW, cosine)
  end offsets        {offsets}  (table embedstream_offsets)
  dead letters       {s['dead_letters']}  -> topic 'products-dlq'
  processing time    {s['processing_seconds']:.2f} s ({s['embeddings_per_second']:.1f} embeddings/s with 1 executor of 1 core)
  nearest to the first text (cosine distance, text):
{near}
  the database       stopped with the demo; start it again and query it:
                     deploy/postgres.sh start {work}/postgres {port} {work}/pg.pass
                     deploy/postgres.sh psql {work}/postgres {port} {work}/pg.pass "SELECT key, value FROM products_embeddings LIMIT 3"
  files              {work}/job.toml, checkpoint {work}/checkpoint, driver log {work}/run.log""")
PY
  exit 0
fi
sed -e "s|@BOOTSTRAP@|127.0.0.1:$PORT|g" -e "s|@WORK@|$WORK|g" -e "s|@MODELS@|$CACHE/models|g" \
  deploy/demo/job.toml >"$WORK/job.toml"

if [ "$OBSERVE" = 1 ]; then
  # A continuous query (a batch every 2 s) and Prometheus scraping it through the driver's target list.
  sed -i -e 's|^available_now = true|processing_time = "2s"|' "$WORK/job.toml"
  printf '\n[monitoring]\nlag_refresh_interval = "2s"\n' >>"$WORK/job.toml"
  "$BIN" run "$WORK/job.toml" --local 1 >"$WORK/summary.json" 2>"$WORK/run.log" &
  QUERY=$!
  PROM=$(free_port)
  mkdir -p "$WORK/prometheus"
  cp deploy/prometheus/alerts.yml "$WORK/prometheus/"
  sed -e "s|/var/lib/embedstream/\*/monitoring/targets.json|$WORK/checkpoint/monitoring/targets.json|" \
    -e 's|scrape_interval: 15s|scrape_interval: 2s|' deploy/prometheus/prometheus.yml >"$WORK/prometheus/prometheus.yml"
  prometheus --config.file="$WORK/prometheus/prometheus.yml" --storage.tsdb.path="$WORK/prometheus/data" \
    --web.listen-address="127.0.0.1:$PROM" >"$WORK/prometheus/log" 2>&1 &
  PROMPID=$!
  trap 'kill -TERM $QUERY 2>/dev/null; wait $QUERY; kill $PROMPID 2>/dev/null; deploy/broker.sh stop "$WORK/broker"' EXIT
  for _ in $(seq 1 300); do [ -s "$WORK/checkpoint/monitoring/targets.json" ] && break; sleep 0.2; done
  DRIVER=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["targets"][0])' "$WORK/checkpoint/monitoring/targets.json")
  cat <<INFO

embedstream demo, observed: the query runs until Ctrl-C
  query page        http://$DRIVER/  (partitions, offsets, lag and the last batches, live)
  Prometheus        http://127.0.0.1:$PROM  (alerts: http://127.0.0.1:$PROM/alerts; try embedstream_source_lag_offsets)
  driver metrics    http://$DRIVER/metrics
  targets           $WORK/checkpoint/monitoring/targets.json
  progress          $BIN progress $WORK/job.toml --follow
  more input        python3 -I deploy/demo/sample_texts.py 5000 | $BIN produce --bootstrap-servers 127.0.0.1:$PORT --topic products
  consumer group    embedstream-products on 127.0.0.1:$PORT
  Grafana           import deploy/grafana/embedstream.json with this Prometheus as its data source
INFO
  wait $QUERY
  exit 0
fi

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
