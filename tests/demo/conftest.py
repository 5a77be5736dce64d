"""Shared fixtures for the demo tests: tiny model directories and one live `gpt124m demo` server.

The server runs the real CLI in a subprocess, on 127.0.0.1 and a free port, under a bootstrap that
(1) refuses and records any connection or name lookup outside loopback, so a test can prove the
app never phones home, and (2) slows each forward pass a little, so streaming and the Stop button
can be watched in a browser even with a tiny model, and (3) logs each forward pass's length, so a
test can see from the server's side whether two generations interleaved.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from gpt124m.checkpoint import save_pretrained
from gpt124m.config import ModelConfig, get_preset
from gpt124m.model import GPT

FORWARD_DELAY_S = 0.08
STARTUP_TIMEOUT_S = 90
BLOCKED = "DEMO-TEST-BLOCKED"
FORWARD_MARK = "DEMO-TEST-FORWARD"  # one line per forward pass, with its number of new tokens

# Runs as `python -c BOOTSTRAP demo ...`; everything after -c reaches gpt124m's CLI unchanged.
BOOTSTRAP = f"""
import ipaddress, socket, sys, time

def _local(host):
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False

def _refuse(what):
    print("{BLOCKED} " + what, file=sys.stderr, flush=True)
    raise OSError("network access outside 127.0.0.1 is blocked in this test: " + what)

_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse("connect " + repr(address))
    return _connect(self, address)

def connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
        _refuse("connect " + repr(address))
    return _connect_ex(self, address)

def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, bytes):
        host = host.decode()
    if not _local(host):
        _refuse("lookup " + repr(host))
    return _getaddrinfo(host, *args, **kwargs)

socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo

from gpt124m.model import GPT
_forward = GPT.forward
def slow_forward(self, *args, **kwargs):
    idx = args[0] if args else kwargs["idx"]
    print("{FORWARD_MARK}", idx.shape[-1], file=sys.stderr, flush=True)
    time.sleep({FORWARD_DELAY_S})
    return _forward(self, *args, **kwargs)
GPT.forward = slow_forward

from gpt124m.cli import main
sys.argv[0] = "gpt124m"
sys.exit(main(sys.argv[1:]))
"""


@dataclasses.dataclass
class DemoServer:
    url: str
    base_dir: Path
    instruct_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def forward_lengths(self, since: int = 0) -> list[int]:
        """The new-token count of each forward pass the server ran, in order, from the
        `since`-th one: a prompt's prefill is the prompt's length, a decode step is 1."""
        marks = [line.split()[-1] for line in self.log().splitlines() if FORWARD_MARK in line]
        return [int(n) for n in marks[since:]]


def lively_model(config: ModelConfig, seed: int) -> GPT:
    """Random weights drawn wide, so greedy text varies with the prompt and position (GPT-2's
    small init makes a tiny model repeat one token, which would hide a wrong-context bug)."""
    generator = torch.Generator().manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:  # LayerNorms and biases keep their init
                std = {"transformer.wte.weight": 0.3, "transformer.wpe.weight": 3.0}.get(name, 0.5)
                p.copy_(torch.randn(p.shape, generator=generator) * std)
    return model.eval()


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny base model, and a tiny "instruct" model (other weights, a 128-token context)
    whose directory records the alpaca template, as `gpt124m sft` would."""
    root = tmp_path_factory.mktemp("demo-models")
    base = save_pretrained(lively_model(get_preset("tiny"), seed=0), root / "base")
    instruct_cfg = dataclasses.replace(get_preset("tiny"), block_size=128)
    instruct = save_pretrained(
        lively_model(instruct_cfg, seed=1),
        root / "instruct",
        metadata={"sft": {"template": "alpaca"}},
    )
    return base, instruct


@pytest.fixture(autouse=True)
def offline_env(monkeypatch):
    """Keep Gradio and its client quiet and local in the test process too."""
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url + "gradio_api/info", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def demo_server(demo_models, tmp_path_factory):
    """`gpt124m demo` with both models, default host (loopback), on a free port."""
    pytest.importorskip("gradio")
    base, instruct = demo_models
    port = free_port()
    log_path = tmp_path_factory.mktemp("demo-server") / "server.log"
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-c", BOOTSTRAP, "demo", "--model", str(base)]
    cmd += ["--instruct-model", str(instruct), "--port", str(port), "--device", "cpu"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    server = DemoServer(f"http://127.0.0.1:{port}/", base, instruct, log_path)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _ready(server.url):
            if proc.poll() is not None:
                pytest.fail(f"gpt124m demo exited with {proc.returncode}:\n{server.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"gpt124m demo not ready after {STARTUP_TIMEOUT_S} s:\n{server.log()}")
            time.sleep(0.25)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    blocked = [line for line in server.log().splitlines() if BLOCKED in line]
    assert not blocked, "the demo server tried to reach the network:\n" + "\n".join(blocked)
