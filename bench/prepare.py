"""Benchmark `gpt124m prepare` against its ceiling, raw tiktoken.

Encodes ../shared/data/tinyshakespeare.txt repeated to ~50 MB (paragraphs as documents, i.e.
`--split-lines`) with `prepare`, then, in the same run, times tiktoken's `encode_ordinary_batch`
on the same documents with the same thread count. Prints both tokens/s and the ratio
(target: >= 80% of the ceiling with 2 workers). `encode_ordinary_batch` submits one thread-pool
task per document, which costs more than the encoding of a short paragraph, so the script also
times a stricter baseline: the same threads each calling `encode_ordinary` over one contiguous
slice of the documents (pure encoder time, no reading, no writing).

    .venv/bin/python bench/prepare.py [--workers 2] [--mb 50] [--repeat 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mb", type=float, default=50.0, help="corpus size in MB")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each; best is reported")
    args = p.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} not found (the shared data folder is absent)")
        return 0

    from gpt124m.data.prepare import PrepareConfig, prepare
    from gpt124m.data.sources import local_documents
    from gpt124m.tokenizer import get_tokenizer

    tok = get_tokenizer()
    text = DATA.read_bytes()
    copies = max(1, round(args.mb * 1e6 / len(text)))
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        with open(corpus, "wb") as f:
            for _ in range(copies):
                f.write(text)
                f.write(b"\n\n")
        docs = [d for d, _ in local_documents([corpus], split_lines=True)]
        n_bytes = corpus.stat().st_size
        print(
            f"corpus: {n_bytes / 1e6:.1f} MB ({copies} x tinyshakespeare), {len(docs):,} documents; "
            f"workers {args.workers}; {os.cpu_count()} CPUs; Python {platform.python_version()}"
        )

        def encode_slice(part: list[str]) -> int:
            return sum(len(tok.encode(d)) + 1 for d in part)

        slices = [docs[i :: args.workers] for i in range(args.workers)]
        best_prep = best_raw = best_slices = float("inf")
        tokens = raw_tokens = 0
        for i in range(args.repeat):
            out = Path(tmp) / f"out{i}"
            cfg = PrepareConfig(
                source=str(corpus),
                out_dir=str(out),
                split_lines=True,
                shard_tokens=5_000_000,
                val_tokens=1_000_000,
                workers=args.workers,
                progress=False,
            )
            t = time.perf_counter()
            manifest = prepare(cfg)
            best_prep = min(best_prep, time.perf_counter() - t)
            tokens = manifest["tokens"]

            t = time.perf_counter()
            encoded = tok.encode_batch(docs, num_threads=args.workers)
            best_raw = min(best_raw, time.perf_counter() - t)
            raw_tokens = sum(len(e) for e in encoded) + len(encoded)  # + one EOT per document
            del encoded

            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
                slice_tokens = sum(pool.map(encode_slice, slices))
            best_slices = min(best_slices, time.perf_counter() - t)

    if not tokens == raw_tokens == slice_tokens:
        print(f"MISMATCH: prepare wrote {tokens:,} tokens, raw encoding gives {raw_tokens:,}")
        return 1
    prep_rate, raw_rate = tokens / best_prep, raw_tokens / best_raw
    slice_rate = tokens / best_slices
    print(
        f"prepare (read + encode + write shards): {best_prep:6.2f} s  {prep_rate:12,.0f} tokens/s"
    )
    print(
        f"tiktoken encode_ordinary_batch (ceiling): {best_raw:6.2f} s  {raw_rate:12,.0f} tokens/s"
    )
    print(
        f"tiktoken encode_ordinary, one slice per thread: {best_slices:6.2f} s  {slice_rate:12,.0f} tokens/s"
    )
    print(f"ratio prepare / ceiling: {prep_rate / raw_rate:.1%} (target >= 80%)")
    print(f"ratio prepare / per-thread slices: {prep_rate / slice_rate:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
