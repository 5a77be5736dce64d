"""Publish an exported directory to the Hugging Face Hub (create the repo, upload the folder).

The token comes from `HF_TOKEN` or a stored `hf auth login`, as huggingface_hub resolves it.
`plan_upload` lists exactly what `push` would send, with no network access: the dry run. Both
check the weights against the config first (`verify.py`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from gpt124m.errors import first_line

log = logging.getLogger(__name__)

# Hidden files and folders (.git, .cache, editor swap files, our own .tmp files) never go up.
IGNORE_PATTERNS = [".*", "*/.*"]
REQUIRED_FILES = ("config.json", "model.safetensors", "README.md")
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
REPO_ID_RE = re.compile(rf"^{_NAME}/{_NAME}$")


@dataclass(frozen=True)
class UploadFile:
    path: str  # relative, '/'-separated, as it will appear in the repo
    size: int


def check_repo_id(repo_id: str, flag: str = "--repo-id") -> str:
    """A repo id of the form USER/NAME (or ORG/NAME), as the Hub accepts it."""
    if not REPO_ID_RE.match(repo_id) or ".." in repo_id or len(repo_id.split("/")[1]) > 96:
        raise ValueError(
            f"{flag} {repo_id!r}: expected USER/NAME (letters, digits, '-', '_', '.'; "
            "the name at most 96 characters)"
        )
    return repo_id


def plan_upload(folder: str | os.PathLike) -> list[UploadFile]:
    """The files `push` uploads from `folder`, sorted, with their sizes in bytes; refused unless
    its weights are readable and match its config.json (a truncated copy must not go up)."""
    from huggingface_hub.utils import filter_repo_objects

    from gpt124m.hf.verify import check_export_weights

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
    if missing:
        raise ValueError(
            f"{root}: not an exported model directory (missing {', '.join(missing)}); "
            "run `gpt124m export` first"
        )
    check_export_weights(root)
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    kept = filter_repo_objects(paths, ignore_patterns=IGNORE_PATTERNS)
    return [UploadFile(p, (root / p).stat().st_size) for p in kept]


def format_plan(files: list[UploadFile]) -> str:
    width = max((len(f.path) for f in files), default=0)
    lines = [f"{f.path:<{width}}  {_human(f.size):>10}" for f in files]
    total = sum(f.size for f in files)
    lines.append(f"{len(files)} files, {_human(total)} in total")
    return "\n".join(lines)


def card_names_repo(folder: str | os.PathLike, repo_id: str) -> bool:
    """Whether the model card's usage snippets load `repo_id` (export --repo-id sets it)."""
    readme = Path(folder) / "README.md"
    return readme.is_file() and f'"{repo_id}"' in readme.read_text()


def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload model exported with gpt124m",
) -> str:
    """Create `repo_id` if needed and upload `folder`; returns the commit URL."""
    from huggingface_hub import HfApi, get_token

    check_repo_id(repo_id)
    files = plan_upload(folder)
    token = token or get_token()
    if not token:
        raise ValueError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (write access needed)"
        )
    if not card_names_repo(folder, repo_id):
        log.warning(
            "README.md does not load %s in its usage snippets; re-export with --repo-id %s",
            repo_id,
            repo_id,
        )
    api = HfApi(token=token)
    try:
        return _create_and_upload(api, folder, repo_id, len(files), private, commit_message)
    except ValueError:
        raise
    except Exception as e:  # offline, refused, a network error: many types, one line
        raise ValueError(
            f"cannot push to {repo_id} on the Hugging Face Hub: {type(e).__name__}: {first_line(e)}"
        ) from None


def _create_and_upload(api, folder, repo_id, n_files, private, commit_message) -> str:
    # None, not False: a new repo then takes its owner's default (an organisation may make
    # them private). An existing repo keeps its visibility whatever is passed, so --private
    # is checked after: never upload to a public repo the user meant to be private.
    url = api.create_repo(
        repo_id, private=True if private else None, exist_ok=True, repo_type="model"
    )
    if private and not api.repo_info(repo_id, repo_type="model").private:
        raise ValueError(
            f"--private: {repo_id} already exists and is public; nothing was uploaded (make it "
            "private on the Hub, or leave out --private)"
        )
    log.info("uploading %d files to %s", n_files, url)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message,
        ignore_patterns=IGNORE_PATTERNS,
    )
    return str(getattr(commit, "commit_url", url))


def _human(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    size, i = float(n), 0
    while size >= 1024 and i < len(units) - 1:
        size, i = size / 1024, i + 1
    return f"{n} B" if i == 0 else f"{size:,.1f} {units[i]}"
