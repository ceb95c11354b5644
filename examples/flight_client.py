"""Embed texts with a running embedstream executor over Arrow Flight, and peek at its query's
latest output. Needs only pyarrow.

    python examples/flight_client.py HOST:PORT QUERY < texts.txt

Prints one JSON line per text, {"text": ..., "embedding": [...]}, then on stderr how many rows
DoGet returned for QUERY. The cluster token, if any, comes from EMBEDSTREAM_TOKEN.
"""
import json
import os
import sys

import pyarrow as pa
import pyarrow.flight as fl

address, query = sys.argv[1], sys.argv[2]
client = fl.connect(f"grpc://{address}")
token = os.environ.get("EMBEDSTREAM_TOKEN")
headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
options = fl.FlightCallOptions(headers=headers)

texts = pa.table({"text": [line.rstrip("\n") for line in sys.stdin if line.strip()]})
writer, reader = client.do_exchange(fl.FlightDescriptor.for_command(b"embed"), options)
writer.begin(texts.schema)
writer.write_table(texts)
writer.done_writing()
embedded = reader.read_all()  # the input's columns, plus embedding: fixed_size_list<float>[384]
writer.close()
for text, vector in zip(embedded.column("text").to_pylist(), embedded.column("embedding").to_pylist()):
    print(json.dumps({"text": text, "embedding": vector}))

live = client.do_get(fl.Ticket(query.encode()), options).read_all()
print(f"DoGet {query}: {live.num_rows} rows, columns {live.column_names}", file=sys.stderr)
