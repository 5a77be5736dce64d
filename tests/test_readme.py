"""README.md as a newcomer runs it: every command it shows, taken from the file itself.

Each command of README's ```bash and ```python blocks either runs, as written, in README order, in
one fresh working directory (so `runs/quickstart/model` exists when the snippet after the
quickstart loads it), or matches a rule below that says why it cannot run here: it needs the
network, GPUs, a server, or the output of a command that does not run. Anything else must run and
succeed, so README and code cannot drift apart. Training runs at full size but for two steps,
under README's documented `GPT124M_MAX_STEPS=2`; the same commands in full are covered by
tests/train/test_quickstart.py and the training tests.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow(
    seconds=150
)  # about two minutes: a quickstart, a training run, an evaluation

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OUTPUT_FLAGS = ("--out", "--out-dir")
# Run by name, not found on PATH: the Python running the tests, with its packages.
PROGRAMS = {"gpt124m": [sys.executable, "-m", "gpt124m"], "python": [sys.executable]}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_ROOTS = ("runs", "out", "data", "results", "hellaswag-results")
# Recipes that need FineWeb-Edu and hours of GPUs.
LONG_RECIPES = ("gpt124m-fineweb-edu", "gpt2-10b", "gpt124m-alpaca")


@dataclasses.dataclass
class Command:
    text: str
    kind: str  # "bash" or "python"
    argv: list[str] = dataclasses.field(default_factory=list)


def readme_commands(text: str) -> list[Command]:
    """Each command of each bash block (`a && b` is two), and each python block, in order."""
    commands = []
    for kind, body in re.findall(r"```(bash|python)\n(.*?)```", text, re.S):
        if kind == "python":
            commands.append(Command(body, "python"))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            while tokens:
                cut = tokens.index("&&") if "&&" in tokens else len(tokens)
                part, tokens = tokens[:cut], tokens[cut + 1 :]
                commands.append(Command(shlex.join(part), "bash", part))
    return commands


def value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv[:-1] else None


def is_hub_id(text: str) -> bool:
    return bool(HUB_ID.match(text)) and text.split("/")[0] not in LOCAL_ROOTS


def outputs(argv: list[str]) -> list[str]:
    """Paths a command writes, so that commands reading them can be told apart."""
    found = [v for flag in OUTPUT_FLAGS if (v := value(argv, flag))]
    if argv[:2] == ["gpt124m", "export"] and len(argv) > 3:
        found.append(argv[3])
    if (recipe := value(argv, "--config")) in LONG_RECIPES:
        found.append(f"runs/{recipe}")
    return found


def why_not_run(cmd: Command, skipped_outputs: list[str]) -> str | None:
    """The reason a README command cannot run here, or None: it must run."""
    if cmd.kind == "python":
        code = re.sub(r"#.*", "", cmd.text)  # comments name alternatives, not what runs
        ids = [m for m in re.findall(r"[\"']([^\"'\s]+)[\"']", code) if is_hub_id(m)]
        return f"loads {ids[0]} from the Hub (network)" if ids else None
    argv = cmd.argv
    head = argv[0]
    if head == "pip":
        return "installs from the network; these tests run in the installed environment"
    if argv[:3] == ["python", "-m", "pytest"]:
        return "is this test suite itself"
    if head == "torchrun":
        return "needs several GPUs (the training tests run DDP and FSDP2 on the CPU)"
    if head == "ruff" and shutil.which("ruff") is None:
        return "ruff is not installed here"
    for path in skipped_outputs:
        if any(a == path or a.startswith(path.rstrip("/") + "/") for a in argv[1:]):
            return f"reads {path}, the output of a command above that does not run here"
    sub = argv[1:3]
    if sub[:1] == ["demo"]:
        return "serves until stopped (tests/demo runs the real server)"
    if (recipe := value(argv, "--config")) in LONG_RECIPES:
        return f"the {recipe} recipe needs its full data set and hours of GPUs"
    if value(argv, "--data") == "alpaca":
        return "downloads tatsu-lab/alpaca (network)"
    source = value(argv, "--source")
    if sub[:1] == ["prepare"] and (source is None or is_hub_id(source)):
        return "streams its source (FineWeb-Edu by default) from the Hugging Face Hub (network)"
    for flag in ("--model", "--base", "--instruct-model"):
        if (v := value(argv, flag)) and is_hub_id(v):
            return f"loads {v} from the Hub (network)"
    if sub == ["eval", "hellaswag"] and value(argv, "--data") is None:
        return "downloads HellaSwag from the Hub (network)"
    if sub[:1] == ["push"] and "--dry-run" not in argv:
        return "uploads to the Hub (network and a token)"
    if sub[:1] == ["chat"] and "--instruction" not in argv:
        return "is interactive"
    return None


@dataclasses.dataclass
class Outcome:
    command: Command
    skipped: str | None = None
    proc: subprocess.CompletedProcess | None = None
    seconds: float = 0.0


def run(cmd: Command, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if cmd.kind == "python":
        argv = [sys.executable, "-c", cmd.text]
    else:
        argv = [*PROGRAMS.get(cmd.argv[0], [cmd.argv[0]]), *cmd.argv[1:]]
    # A command about the checkout itself (the linters' ".") runs in the checkout.
    where = ROOT if cmd.argv[-1:] == ["."] else cwd
    return subprocess.run(
        argv,
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def tour(tmp_path_factory) -> tuple[Path, list[Outcome]]:
    """README top to bottom in one fresh directory: what ran (and how), what did not (and why)."""
    cwd = tmp_path_factory.mktemp("newcomer")
    env = {
        **os.environ,
        "GPT124M_MAX_STEPS": "2",
        "HF_HUB_OFFLINE": "1",  # a command that would reach the Hub fails instead
        "HF_HOME": str(cwd / ".hf"),
    }
    outcomes: list[Outcome] = []
    skipped_outputs: list[str] = []
    for cmd in readme_commands(README.read_text()):
        reason = why_not_run(cmd, skipped_outputs)
        if reason:
            skipped_outputs += outputs(cmd.argv) if cmd.kind == "bash" else []
            outcomes.append(Outcome(cmd, skipped=reason))
        else:
            start = time.perf_counter()
            proc = run(cmd, cwd, env)
            outcomes.append(Outcome(cmd, proc=proc, seconds=time.perf_counter() - start))
    return cwd, outcomes


def test_readme_starts_with_install_and_run_then_the_tests():
    first = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1).splitlines()
    install, tests = first[0], first[1]
    assert README.read_text().startswith("# gpt124m\n\n```bash\n")
    assert "--index-url https://download.pytorch.org/whl/cpu" in install  # no CUDA build on CPU
    assert install.split("#")[0].strip().endswith("gpt124m quickstart")
    assert tests.split("#")[0].strip().endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\npython -m pytest -q\n" in ci, "CI runs README's test command as written"


def test_every_offline_readme_command_runs(tour):
    _, outcomes = tour
    failures = [
        f"$ {o.command.text.strip()}\n(exit {o.proc.returncode})\n{o.proc.stderr[-3000:]}"
        for o in outcomes
        if o.proc is not None and o.proc.returncode != 0
    ]
    assert not failures, "README commands that fail:\n\n" + "\n\n".join(failures)
    print("README commands run here (seconds):")  # shown with -s: README's times, checked
    for o in outcomes:
        if o.proc is not None:
            print(f"{o.seconds:7.1f}  {o.command.text.strip().splitlines()[0]}")
    ran = [o.command.text for o in outcomes if o.proc is not None]
    for must in ("gpt124m quickstart", "gpt124m prepare --source builtin --out-dir data/builtin"):
        assert must in ran, f"{must!r} must run, not be skipped"
    assert any(o.command.kind == "python" for o in outcomes if o.proc is not None)


def test_training_commands_ran_capped_and_said_so(tour):
    _, outcomes = tour
    trained = [o for o in outcomes if o.proc is not None and o.command.argv[1:2] in (
        ["quickstart"], ["train"], ["sft"])]  # fmt: skip
    assert trained
    for o in trained:
        assert "GPT124M_MAX_STEPS=2: stopping after 2 of the" in o.proc.stderr, o.command.text


def test_every_command_left_out_says_why(tour):
    _, outcomes = tour
    skipped = {o.command.text.strip(): o.skipped for o in outcomes if o.skipped}
    # A few that must never run here, whatever README says around them.
    for text, reason in skipped.items():
        assert reason and len(reason) > 10, text
    summary = "\n".join(f"{t!r}: {r}" for t, r in skipped.items())
    print("README commands not run here:\n" + summary)
    assert not any(t.startswith("gpt124m quickstart") for t in skipped)


def test_readme_outputs_are_ignored_by_git(tour):
    cwd, _ = tour
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    made = sorted(p.name for p in cwd.iterdir() if not p.name.startswith("."))
    assert {"data", "runs", "out"} <= set(made)
    made.append("hellaswag-results")  # `eval hellaswag`'s default --out
    for name in made:
        check = subprocess.run(
            ["git", "check-ignore", "-q", "--no-index", f"{name}/file"], cwd=ROOT, timeout=60
        )
        assert check.returncode == 0, f"{name}/ is not ignored by .gitignore"
