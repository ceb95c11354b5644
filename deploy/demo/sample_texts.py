#!/usr/bin/env python3
"""Prints N lines of real English text of mixed length (5 to 120 words): the prose paragraphs of
the docstrings of Python's standard library, which every python3 installation carries.

    python3 deploy/demo/sample_texts.py 2000 > texts.txt
"""
import importlib
import inspect
import re
import sys

MODULES = """abc argparse ast asyncio base64 bisect bz2 calendar cmd codecs collections colorsys
configparser contextlib copy csv dataclasses datetime decimal difflib dis doctest email enum
filecmp fileinput fnmatch fractions ftplib functools getopt gettext glob gzip hashlib heapq hmac
html http.client http.cookies imaplib inspect io ipaddress itertools json linecache locale logging
lzma mailbox mimetypes numbers operator optparse os pathlib pickle pkgutil platform plistlib poplib
pprint pstats queue quopri random re reprlib sched secrets selectors shelve shlex shutil signal
smtplib socket socketserver sqlite3 ssl statistics string struct subprocess symtable tarfile
tempfile textwrap threading timeit tokenize trace traceback types typing unittest urllib.parse
urllib.request uuid warnings wave weakref xml.dom.minidom xml.etree.ElementTree zipfile zipimport""".split()


def docstrings():
    for name in MODULES:
        try:
            mod = importlib.import_module(name)
        except Exception:
            continue
        yield inspect.getdoc(mod)
        for _, obj in sorted(vars(mod).items()):
            if getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                yield inspect.getdoc(obj)
                if inspect.isclass(obj):
                    for _, member in sorted(vars(obj).items()):
                        if inspect.isfunction(member):
                            yield inspect.getdoc(member)


def paragraphs():
    seen = set()
    for doc in docstrings():
        for para in re.split(r"\n\s*\n", doc or ""):
            text = " ".join(para.split())
            words = text.split()
            if not 5 <= len(words) <= 120 or text in seen:
                continue
            # Prose only: no code, tables, signatures or option lists.
            if re.search(r">>>|::|==|->|\{|\}|\$|^[-*:(]|\w\(.*\)$", text):
                continue
            if sum(w.isalpha() for w in words) < 0.6 * len(words):
                continue
            seen.add(text)
            yield text


def sample(n):
    """N distinct texts: the paragraphs, repeated with a marker past their end."""
    texts = list(paragraphs())
    if not texts:
        sys.exit("no docstrings found")
    return [texts[i % len(texts)] if i < len(texts) else f"{texts[i % len(texts)]} ({i // len(texts)})" for i in range(n)]


def main():
    for text in sample(int(sys.argv[1]) if len(sys.argv) > 1 else 2000):
        print(text)


if __name__ == "__main__":
    main()
