import json

import numpy as np
import pytest

from gpt124m.data import shards as fmt


@pytest.fixture
def make_data_dir():
    """Build a prepared directory from given token arrays, bypassing `prepare`."""

    def make(path, train, val=(), *, tokenizer="gpt2", vocab_size=50257):
        path.mkdir(parents=True, exist_ok=True)
        entries = []
        for split, arrays in (("val", val), ("train", train)):
            for i, tokens in enumerate(arrays):
                name = fmt.shard_name(split, i)
                digest = fmt.write_shard(path / name, np.asarray(tokens, dtype=np.uint16))
                entries.append(
                    {"name": name, "split": split, "tokens": len(tokens), "sha256": digest}
                )
        manifest = {
            "format": fmt.MANIFEST_FORMAT,
            "format_version": fmt.MANIFEST_FORMAT_VERSION,
            "complete": True,
            "tokenizer": tokenizer,
            "vocab_size": vocab_size,
            "shards": entries,
        }
        (path / fmt.MANIFEST).write_text(json.dumps(manifest))
        return path

    return make
