"""Reading instruction data: Alpaca rows from the Hub or a local JSON, JSONL or parquet file (the
hub's own copy of Alpaca is parquet), checked one by one, malformed rows skipped and reported by
reason and location, never silently."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt124m.errors import first_line
from gpt124m.sft.config import ALPACA_HUB_ID

log = logging.getLogger(__name__)

MAX_LOCATIONS = 10  # per reason, in the malformed-rows report


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    output: str


@dataclass
class LoadReport:
    """What reading a source found: rows seen, and the malformed ones by reason and location."""

    source: str
    rows: int = 0
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @property
    def malformed(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def add(self, reason: str, where: str) -> None:
        self.problems[reason].append(where)

    def reasons(self) -> str:
        parts = []
        for reason, where in sorted(self.problems.items(), key=lambda kv: -len(kv[1])):
            shown = ", ".join(where[:MAX_LOCATIONS]) + (
                ", ..." if len(where) > MAX_LOCATIONS else ""
            )
            parts.append(f"{len(where)} {reason} ({shown})")
        return "; ".join(parts)

    def describe(self) -> str:
        return (
            f"{self.source}: {self.malformed} of {self.rows} rows malformed and skipped: "
            + self.reasons()
        )


def _check_row(row: Any) -> tuple[Example | None, str | None]:
    """The example in one row, or the reason it is malformed."""
    if not isinstance(row, dict):
        return None, "not an object"
    values = {}
    for key in ("instruction", "output"):
        value = row.get(key)
        if value is None:
            return None, f"missing '{key}'"
        if not isinstance(value, str):
            return None, f"'{key}' is not a string"
        if not value.strip():
            return None, f"empty '{key}'"
        values[key] = value
    input_text = row.get("input")
    if input_text is None:
        input_text = ""
    if not isinstance(input_text, str):
        return None, "'input' is not a string"
    return Example(values["instruction"], input_text, values["output"]), None


def parse_rows(rows: Sequence[tuple[str, Any]], report: LoadReport) -> list[Example]:
    """Validate `(location, row)` pairs; malformed rows go to `report`."""
    examples = []
    for where, row in rows:
        report.rows += 1
        example, problem = _check_row(row)
        if problem:
            report.add(problem, where)
        else:
            examples.append(example)
    return examples


def _read_jsonl(text: str, report: LoadReport) -> list[tuple[str, Any]]:
    """One record per `\n`: JSON strings may hold U+0085, U+2028 and U+2029 unescaped, and
    `str.splitlines` would cut a record at them."""
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"line {number}", json.loads(line)))
        except json.JSONDecodeError:
            report.rows += 1
            report.add("invalid JSON", f"line {number}")
    return rows


def _read_parquet(path: Path) -> list[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"--data {path}: not a readable parquet file ({first_line(e)})") from None
    return [(f"row {i}", row) for i, row in enumerate(table.to_pylist())]


def _read_file(path: Path, report: LoadReport) -> list[tuple[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(
            f"--data {path}: no such file (give `alpaca` or a JSON, JSONL or parquet file)"
        )
    if path.suffix.lower() == ".parquet":
        return _read_parquet(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is not data
    except UnicodeDecodeError as e:
        raise ValueError(f"--data {path}: not UTF-8 text ({e})") from None
    if path.suffix == ".jsonl":
        return _read_jsonl(text, report)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line in a .json file
            return _read_jsonl(text, report)
        raise ValueError(f"--data {path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(
            f"--data {path}: expected a JSON array of objects with instruction, input and output"
        )
    return [(f"item {i}", row) for i, row in enumerate(data)]


def _hub_rows() -> list[tuple[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise ValueError(
            "--data alpaca needs the `datasets` package: pip install 'gpt124m[data]', "
            "or pass a local JSON, JSONL or parquet file"
        ) from None
    try:
        ds = datasets.load_dataset(ALPACA_HUB_ID, split="train")
    except Exception as e:
        raise ValueError(
            f"--data alpaca: could not load {ALPACA_HUB_ID} from the Hugging Face Hub "
            f"({type(e).__name__}: {e}); pass a local JSON, JSONL or parquet file instead"
        ) from None
    return [(f"row {i}", dict(row)) for i, row in enumerate(ds)]


def load_examples(source: str) -> tuple[list[Example], LoadReport]:
    """Examples from `alpaca` (the Hub) or a local JSON, JSONL or parquet file; malformed rows
    reported."""
    name = ALPACA_HUB_ID if source == "alpaca" else str(source)
    report = LoadReport(name)
    rows = _hub_rows() if source == "alpaca" else _read_file(Path(source).expanduser(), report)
    examples = parse_rows(rows, report)
    if not examples:  # the error carries the report: no warning to repeat it
        detail = f": {report.reasons()}" if report.malformed else ""
        raise ValueError(
            f"--data {source}: no usable examples in {report.rows} rows{detail}; each record "
            "needs non-empty 'instruction' and 'output' strings (and may have 'input')"
        )
    if report.malformed:
        log.warning("%s", report.describe())
    return examples, report
