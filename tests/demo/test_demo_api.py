"""The running demo through its HTTP API (gradio_client), against the project's own CLI."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gpt124m.cli import main

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

PROMPT = "The meaning of life is"
N_NEW = 12


@pytest.fixture(scope="module")
def client(demo_server):
    return gradio_client.Client(
        demo_server.url, analytics_enabled=False, verbose=False, download_files=False
    )


def run_cli(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    return out[:-1]


def greedy(client, prompt: str, n: int) -> tuple[str, str]:
    # prompt, max_new_tokens, sample, temperature, top_k, top_p, seed
    return client.predict(prompt, n, False, 0.8, 50, 1.0, -1, api_name="/complete")


def test_greedy_completion_equals_gpt124m_generate(client, demo_server, capsys):
    text, status = greedy(client, PROMPT, N_NEW)
    expected = run_cli(
        capsys,
        ["generate", "--model", str(demo_server.base_dir), "--prompt", PROMPT, "--temperature",
         "0", "--max-new-tokens", str(N_NEW), "--device", "cpu"],
    )  # fmt: skip
    assert text == expected
    assert len(text) > 0
    assert status.startswith("Done")


def test_sampling_with_a_seed_is_reproducible_and_differs_from_greedy(client):
    args = (PROMPT, N_NEW, True, 1.0, 0, 1.0, 1234)
    first, _ = client.predict(*args, api_name="/complete")
    again, _ = client.predict(*args, api_name="/complete")
    assert first == again
    assert first != greedy(client, PROMPT, N_NEW)[0]


def test_seed_minus_one_draws_a_fresh_seed_each_run(client):
    runs = {client.predict(PROMPT, N_NEW, True, 1.0, 0, 1.0, -1, api_name="/complete")[0]}
    runs.add(client.predict(PROMPT, N_NEW, True, 1.0, 0, 1.0, -1, api_name="/complete")[0])
    assert len(runs) == 2


def test_instruct_applies_chat_template_and_shows_only_the_response(client, demo_server, capsys):
    instruction, input_text = "Name a color.", "The sky on a clear day."
    text, _ = client.predict(
        instruction, input_text, N_NEW, False, 0.7, 50, 1.0, -1, api_name="/instruct"
    )
    expected = run_cli(
        capsys,
        ["chat", "--model", str(demo_server.instruct_dir), "--instruction", instruction,
         "--input", input_text, "--temperature", "0", "--max-new-tokens", str(N_NEW),
         "--device", "cpu"],
    )  # fmt: skip
    assert text == expected
    assert "### Response" not in text and instruction not in text


def test_over_long_prompt_gets_a_readable_error(client):
    prompt = " hello" * 40  # 40 tokens; the tiny model's cap is 32 of its 64
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        greedy(client, prompt, N_NEW)
    message = str(err.value)
    assert "The prompt is too long: 40 tokens; the limit is 32 tokens." in message
    assert "Traceback" not in message and 'File "' not in message


def test_max_new_tokens_is_capped(client):
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        greedy(client, PROMPT, 33)
    assert "33" in str(err.value) and "32" in str(err.value)


@pytest.mark.parametrize("seed", [2.5, -0.6])
def test_a_seed_that_is_not_whole_is_refused_not_rounded(client, seed):
    """The widget once rounded it: 2.5 ran as 2, and -0.6 as -1, a fresh random seed."""
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(PROMPT, N_NEW, True, 1.0, 0, 1.0, seed, api_name="/complete")
    assert "The seed must be a whole number" in str(err.value)


def test_empty_instruction_is_refused(client):
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict("  ", "", N_NEW, False, 0.7, 50, 1.0, -1, api_name="/instruct")
    assert "Enter an instruction first." in str(err.value)


def test_only_the_generation_endpoints_are_public(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == {"/complete", "/instruct"}


def test_requests_beyond_the_concurrency_limit_wait_in_the_queue(client, demo_server):
    """The server runs with the default limit of 1: a second request queues behind the first.

    Judged from the server's own record of forward passes (a prefill of the prompt, then one
    decode step per token), which the client's lagging view of two streams cannot give: run one
    after the other, the two generations are two identical runs; run alongside, the second's
    prefill lands among the first's decode steps."""
    args = (PROMPT, 32, False, 0.8, 50, 1.0, -1)
    before = len(demo_server.forward_lengths())
    first = client.submit(*args, api_name="/complete")
    deadline = time.monotonic() + 60
    while not first.outputs() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert first.outputs(), "the first request never started streaming"
    second = client.submit(*args, api_name="/complete")
    passes_by_then = len(demo_server.forward_lengths(before))  # read after the submit
    assert first.result()[0] == second.result()[0]
    calls = demo_server.forward_lengths(before)
    prefills = [i for i, n in enumerate(calls) if n > 1]
    assert len(prefills) == 2 and prefills[0] == 0, calls
    first_run, second_run = calls[: prefills[1]], calls[prefills[1] :]
    assert first_run == second_run, f"the second request ran alongside the first: {calls}"
    assert passes_by_then < len(first_run), "the first had finished before the second came"


def test_server_listens_on_loopback_only_by_default(demo_server):
    """The server was started without --host; Linux's socket table shows where it listens."""
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].is_file():
        pytest.skip("no /proc/net/tcp on this system")
    port = urlsplit(demo_server.url).port
    listening = set()
    for table in tables:
        if not table.is_file():
            continue
        for line in table.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                listening.add(address)
    assert listening == {"0100007F"}  # 127.0.0.1, little-endian hex; nothing on 0.0.0.0 or ::
