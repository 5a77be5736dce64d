"""The demo in a real browser: Debian's Chromium driven by Playwright, no browser downloads.

Screenshots land in pytest's tmp dir and are copied to ./test-artifacts (gitignored) for CI to
keep. Every request the page makes must go to the demo server on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gpt124m.generate import GenerationConfig, generate_text
from gpt124m.loading import load_model
from gpt124m.tokenizer import get_tokenizer

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROMPT = "The meaning of life is"
MAX_NEW = 32  # the slider's default for the tiny model: its cap, half of a 64-token context

pytestmark = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason=f"Chromium not found at {CHROMIUM}; install Debian's package "
    "(apt-get install chromium) to run the browser test",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) not installed")


def save_screenshot(page, tmp_path: Path, name: str, *, full_page: bool = True) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=full_page, animations="disabled")
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / name)
    return shot


def wait_for(condition, what: str, timeout_s: float = 30.0, poll_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def settled(textbox, quiet_s: float = 0.5) -> str | None:
    """The textbox's value if it does not change for `quiet_s`, else None."""
    before = textbox.input_value()
    time.sleep(quiet_s)
    return before if textbox.input_value() == before else None


def test_generate_stream_stop_and_sampling_toggle(demo_server, tmp_path):
    expect = sync_api.expect
    base = load_model(demo_server.base_dir)
    greedy = generate_text(base, get_tokenizer(), [PROMPT], GenerationConfig(MAX_NEW))[0]
    greedy = greedy.replace("\r\n", "\n").replace("\r", "\n")  # as a textarea's value has it
    requested: list[str] = []

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh profile every run
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            browser.on("request", lambda r: requested.append(r.url))
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(demo_server.url)

            output = page.locator("#output textarea")
            status = page.locator("#status")
            sliders = [page.locator(f"#{n} input[type=range]") for n in ("temperature", "top-k", "top-p")]  # fmt: skip
            sample = page.locator("#sample input[type=checkbox]")

            panel = page.locator("#model-info")
            for fact in ("Parameters", "Context length", "64 tokens", "float32", "cpu"):
                expect(panel).to_contain_text(fact)
            expect(sample).to_be_checked()
            for slider in sliders:
                expect(slider).to_be_enabled()

            # Sampled run: the text must be seen growing, not only in its final form.
            page.locator("#prompt textarea").fill(PROMPT)
            page.locator("#generate").click()
            seen: list[str] = []

            def finished() -> bool:
                text = output.input_value()
                if text and (not seen or seen[-1] != text):
                    seen.append(text)
                return status.inner_text().startswith("Done")

            wait_for(finished, "the sampled run to finish")
            assert len(seen) >= 3, f"output did not stream: {seen}"
            assert all(b.startswith(a) for a, b in zip(seen, seen[1:], strict=False))

            # Sampling off: greedy, and the sampling controls are disabled.
            sample.uncheck()
            for slider in sliders:
                expect(slider).to_be_disabled()
            expect(page.locator("#seed input")).to_be_disabled()

            # Stop ends a run: the text stops growing (a piece already on its way may still
            # land) and stays a proper prefix of the full greedy output.
            page.locator("#generate").click()
            expect(status).to_have_text("Generating…")
            wait_for(lambda: output.input_value(), "the first streamed text")
            page.locator("#stop").click()
            expect(status).to_have_text("Stopped.")
            stopped = wait_for(lambda: settled(output), "the text to stop changing")
            time.sleep(1.0)
            assert output.input_value() == stopped
            assert greedy.startswith(stopped) and len(stopped) < len(greedy)

            # A full greedy run shows exactly what the library generates.
            page.locator("#generate").click()
            expect(status).to_contain_text("Done", timeout=30_000)
            assert output.input_value() == greedy
            save_screenshot(page, tmp_path, "demo.png")

            # The instruct tab answers with the response only.
            page.get_by_role("tab", name="Instruct").click()
            page.locator("#instruct-instruction textarea").fill("Name a color.")
            page.locator("#instruct-max-new-tokens input[type=number]").fill("16")
            page.locator("#instruct-max-new-tokens input[type=number]").press("Enter")
            page.locator("#instruct-generate").click()
            expect(page.locator("#instruct-status")).to_contain_text("Done", timeout=30_000)
            response = page.locator("#instruct-output textarea").input_value()
            assert response and "### Response" not in response
            save_screenshot(page, tmp_path, "demo-instruct.png")

            # An over-long prompt: a readable message in the page, no traceback.
            page.get_by_role("tab", name="Completion").click()
            page.locator("#prompt textarea").fill(" hello" * 40)
            page.locator("#generate").click()
            message = "The prompt is too long: 40 tokens; the limit is 32 tokens."
            expect(status).to_contain_text(f"Error: {message}")
            toast = page.get_by_test_id("toast-body")
            expect(toast).to_contain_text(message)
            assert "Traceback" not in page.content()
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(1000)  # only for the picture: the toast fades in
            save_screenshot(page, tmp_path, "demo-error.png", full_page=False)  # toast is fixed
        finally:
            browser.close()

    hosts = {urlsplit(u).netloc for u in requested if urlsplit(u).scheme in ("http", "https", "ws")}
    assert hosts == {urlsplit(demo_server.url).netloc}, f"requests left the demo server: {hosts}"
