"""The bundled corpus: documentation that ships with Python itself, so the quickstart needs no
network and no data files of ours.

Documents, in a fixed order: every `pydoc_data` help topic (the language reference text behind
`help("if")`, ~465 KB), then one document per standard-library module made of its docstrings
(~2 MB). Docstrings are taken as the triple-quoted literals that begin a line: a regular
expression over the source runs ~20x faster than parsing every module with `ast`, and the odd
non-docstring literal it admits is still Python's own prose. The text depends on the Python
version, which the manifest records.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

_DOCSTRING = re.compile(r"^[ \t]*[rRuU]?(\"\"\"|''')(.*?)\1", re.S | re.M)
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


def describe() -> dict:
    return {"kind": "builtin", "python": sys.version.split()[0]}


def stdlib_files(root: str | os.PathLike | None = None) -> list[Path]:
    """Standard-library `.py` files (tests and installed packages excluded), in sorted order."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py"))
    return files


def module_document(path: Path, root: Path) -> str:
    """A module's name followed by its docstrings, blank-line separated ('' if it has none)."""
    source = path.read_bytes().decode("utf-8", errors="replace")
    docs = [inspect.cleandoc(m.group(2)) for m in _DOCSTRING.finditer(source)]
    docs = [d for d in docs if d.strip()]
    if not docs:
        return ""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    return "\n\n".join([module, *docs])


def documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield topics[name]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in stdlib_files(root):
        doc = module_document(path, root)
        if doc:
            yield doc
