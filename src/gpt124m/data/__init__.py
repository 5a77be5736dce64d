"""Training data: `prepare` turns text into uint16 token shards, `loader` reads them back.

A prepared directory holds `manifest.json` plus `val_NNNNNN.bin` and `train_NNNNNN.bin` shards
(see `gpt124m.data.shards` for the file format).
"""
