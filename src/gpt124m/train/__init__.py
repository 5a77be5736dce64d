"""Pretraining: one loop (also used by SFT) over small components — optimizer, schedule,
distributed setup, checkpoints, metrics — each swappable without touching the model."""
