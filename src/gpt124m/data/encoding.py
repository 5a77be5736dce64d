"""Documents to GPT-2 tokens on a thread pool, in source order, for `gpt124m.data.prepare`.

Each document becomes `<|endoftext|>` followed by its tokens. Encoding runs on a thread pool
(tiktoken releases the GIL) over chunks of documents, and results are consumed in order, so the
output does not depend on the worker count.
"""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gpt124m.data.sources import Document, Source

CHUNK_CHARS = 1 << 20
CHUNK_DOCS = 4096
COUNTERS = ("documents", "skipped_empty", "replaced_sequences", "repaired_documents")


@dataclass
class Chunk:
    first: int  # index of its first document in the source stream
    tokens: np.ndarray  # uint16, every kept document as EOT + tokens
    ends: np.ndarray  # cumulative token count at the end of each document
    counts: np.ndarray  # [n_docs, len(COUNTERS)] per-document contributions to the counters
    chars: int
    # where a source that can resume (a hub stream) stands after this chunk: {"document": index
    # of the next document, "state": the source's own state}; None for one that cannot
    after: dict | None = None


def stream_position(
    first: int, ends: np.ndarray, counts: np.ndarray, before: np.ndarray, used: int
) -> dict:
    """Where the document stream stands after `used` tokens of a chunk (its `first`, `ends`,
    `counts`), given the counters `before` it: document index, tokens of that document already
    used, running counters. What a shard records so that a rerun can resume after it."""
    done = int(np.searchsorted(ends, used, side="right"))
    start = int(ends[done - 1]) if done else 0
    totals = before + counts[:done].sum(axis=0)
    return {
        "document": first + done,
        "offset": used - start,
        **{k: int(v) for k, v in zip(COUNTERS, totals, strict=True)},
    }


def encode_chunk(first: int, docs: list[Document]) -> Chunk:
    from gpt124m.tokenizer import get_tokenizer

    tok = get_tokenizer()
    eot = tok.eot_id
    ids: list[int] = []
    lengths = np.zeros(len(docs), dtype=np.int64)
    counts = np.zeros((len(docs), len(COUNTERS)), dtype=np.int64)
    chars = 0
    for i, (text, replaced) in enumerate(docs):
        if not text or text.isspace():
            counts[i, 1] = 1
            continue
        chars += len(text)
        before = len(ids)
        ids.append(eot)
        ids.extend(tok.encode(text))
        lengths[i] = len(ids) - before
        counts[i, 0] = 1
        counts[i, 2] = replaced
        counts[i, 3] = replaced > 0
    return Chunk(first, np.array(ids, dtype=np.uint16), np.cumsum(lengths), counts, chars)


def _batches(
    docs: Iterator[Document], start: int, source: Source
) -> Iterator[tuple[int, list[Document], dict | None]]:
    """Batches of documents, each with the stream point after it (read in this thread, between
    documents, where the source's state is exact)."""
    batch: list[Document] = []
    chars = 0
    first = start

    def after() -> dict | None:
        state = source.state() if source.state else None
        return None if state is None else {"document": first + len(batch), "state": state}

    for doc in docs:
        batch.append(doc)
        chars += len(doc[0] or "")
        if chars >= CHUNK_CHARS or len(batch) >= CHUNK_DOCS:
            yield first, batch, after()
            first += len(batch)
            batch, chars = [], 0
    if batch:
        yield first, batch, after()


def encoded_chunks(
    source: Source, start: int, workers: int, resume_at: dict | None = None
) -> Iterator[Chunk]:
    """Encoded chunks in source order from document `start` on, `workers` threads ahead.
    `resume_at`, a point a chunk recorded (`Chunk.after`) at or before `start`, lets a source
    that can resume skip there at once (a hub stream: whole files unread), not document by
    document from the beginning."""
    docs = None
    if resume_at is not None and source.resume is not None:
        docs, skip = source.resume(resume_at["state"]), start - resume_at["document"]
    if docs is None:
        docs, skip = source.documents(), start
    for _ in range(skip):
        if next(docs, None) is None:
            raise ValueError("the source has fewer documents than the earlier run recorded")
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        pending: collections.deque = collections.deque()
        try:
            for first, batch, after in _batches(docs, start, source):
                pending.append((pool.submit(encode_chunk, first, batch), after))
                while len(pending) > 2 * workers:
                    yield _done(*pending.popleft())
            while pending:
                yield _done(*pending.popleft())
        finally:
            for future, _ in pending:
                future.cancel()


def _done(future: concurrent.futures.Future, after: dict | None) -> Chunk:
    chunk = future.result()
    chunk.after = after
    return chunk
