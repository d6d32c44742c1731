"""Does decoding XML messages on several threads help one worker? lxml's parse
and XSD validation are C; if they let go of the interpreter lock, a pool could
overlap one message's parse with another's Python work.

800 simulated orders as 100-document XML messages of the four types (32
messages), parsed alone (`etree.fromstring` with the worker's parser) and
decoded whole (`ceb.decode`: parse, validation, fields, checks, signature), on
1, 2 and 4 threads; best of three, µs per document of wall time.

Usage: python -m benchmarks.xml_threads
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lxml import etree

from streams.simulator import generate, to_xml
from topics import ceb


def main() -> None:
    orders = list(generate(800, seed=1))
    msgs = [to_xml(t, [o.docs[t] for o in orders[i:i + 100] if t in o.docs])
            for t in ("311", "411", "511", "621") for i in range(0, 800, 100)]
    docs = sum(len(o.docs) for o in orders)  # some orders lack a payment or waybill

    def parse(data: bytes) -> Any:
        return etree.fromstring(data, ceb._SECURE_PARSER)

    for name, fn in (("parse", parse), ("decode", ceb.decode)):
        for threads in (1, 2, 4):
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                if threads == 1:
                    for m in msgs:
                        fn(m)
                else:
                    with ThreadPoolExecutor(threads) as pool:
                        list(pool.map(fn, msgs))
                best = min(best, time.perf_counter() - t)
            print(f"{name:7} {threads} thread(s): {best * 1e6 / docs:6.1f} µs per document")


if __name__ == "__main__":
    main()
