"""Which commit of a hub dataset `prepare` reads: the one an interrupted run recorded, else the
one a branch or tag (by default the main branch) names now. Streamed by name alone, a dataset
updated between a run and its resume would splice two versions into one set of shards, and the
resume skips by document count, so nothing would say so."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from gpt124m.errors import first_line

log = logging.getLogger(__name__)
_COMMIT = re.compile(r"[0-9a-f]{40}")


def commit_of(repo_id: str, revision: str | None) -> str | None:
    """The commit `revision` names on the hub now; None (with a warning) where the hub cannot be
    asked and none was given (a cache-only, offline run)."""
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision  # a commit names itself: no lookup (a resume may be offline)
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo_id, revision=revision).sha or revision
    except Exception as e:  # offline, a typo, a private repo: many types
        if revision is not None:
            raise ValueError(
                f"--revision {revision}: not found for dataset {repo_id} on the Hugging Face Hub "
                f"({type(e).__name__}: {first_line(e)})"
            ) from None
        log.warning(
            "could not look up the current commit of %s (%s); the manifest records none, so a "
            "resume cannot tell whether the dataset changed",
            repo_id,
            first_line(e),
        )
        return None


def recorded(out_dir: str | Path, source: str, hf_config: str | None, split: str) -> str | None:
    """The commit an earlier run of the same hub source into `out_dir` recorded, if any."""
    path = Path(out_dir) / "manifest.json"
    try:
        described = json.loads(path.read_text())["settings"]["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none, or one `prepare` itself will judge
    same = isinstance(described, dict) and described.get("kind") == "huggingface"
    same = same and (described.get("dataset"), described.get("config"), described.get("split"))
    if same != (source, hf_config, split):
        return None
    commit = described.get("revision")
    return commit if isinstance(commit, str) else None
