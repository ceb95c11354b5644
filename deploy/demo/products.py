#!/usr/bin/env python3
"""The product demo's records: N JSON lines with a title, a description and an image URL, the
images openclipart clip art (Debian's openclipart-png) copied into DIR, which the demo serves
over HTTP at URL_BASE. A product's title comes from its picture's name and folder (food/fruit,
computer, tools...), its description from real English text.

    python3 deploy/demo/products.py N DIR URL_BASE > products.jsonl
    python3 deploy/demo/products.py serve DIR PORT     the image host, on 127.0.0.1:PORT
"""
import functools
import http.server
import json
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import sample_texts  # noqa: E402

CLIP_ART = pathlib.Path("/usr/share/openclipart/png")
FOLDERS = ["food/fruit", "computer", "tools", "animals/birds", "transportation", "office", "food/beverages"]


def pictures(folder):
    files = [p for p in sorted((CLIP_ART / folder).glob("*.png")) if not p.is_symlink() and p.stat().st_size < 500_000]
    return files


class Host(http.server.ThreadingHTTPServer):
    # A deep listen backlog: http.server's 5 drops connections when an executor opens 32 at
    # once, and each dropped one waits a second for its SYN to be sent again.
    request_queue_size = 256


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve(directory, port):
    Host(("127.0.0.1", port), functools.partial(Quiet, directory=directory)).serve_forever()


def main():
    if sys.argv[1] == "serve":
        return serve(sys.argv[2], int(sys.argv[3]))
    n, out, base = int(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3].rstrip("/")
    out.mkdir(parents=True, exist_ok=True)
    lists = [(f, pictures(f)) for f in FOLDERS]
    texts = sample_texts.sample(n)
    for i in range(n):
        folder, files = lists[i % len(lists)]
        picture = files[(i // len(lists)) % len(files)]
        name = f"{folder.replace('/', '-')}-{picture.name}"
        if not (out / name).exists():
            shutil.copyfile(picture, out / name)
        words = picture.stem.replace("_", " ").replace("-", " ").split()
        title = " ".join(w for w in words if w.isalpha())[:80] or folder
        record = {"title": f"{title} ({folder})", "description": texts[i], "image_url": f"{base}/{name}"}
        print(json.dumps(record))


if __name__ == "__main__":
    main()
