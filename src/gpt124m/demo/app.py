"""The Gradio app: a Completion tab, an Instruct tab when an instruct model is given, a model panel.

Built to be shared: requests are capped (see `backend.Limits`), generation runs through a queue
with a concurrency limit, every failure reaches the browser as a one-line message (never a
traceback), the server binds to loopback unless told otherwise, and nothing phones home.
Gradio is imported inside the functions, so the rest of the package works without it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from gpt124m.demo.backend import DemoModel, Sampling

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install -e ".[demo]" (in a checkout) or pip install "gpt124m[demo]"'
COMPLETION_EXAMPLES = [
    "The meaning of life is",
    "Once upon a time, in a small village by the sea,",
    "The three most important inventions of the 20th century are",
    "def fibonacci(n):",
]
INSTRUCT_EXAMPLES = [
    ["Give three tips for staying healthy.", ""],
    ["Summarize the text in one sentence.", "The Moon is Earth's only natural satellite."],
    ["Translate to French.", "Where is the train station?"],
]
GENERATION_QUEUE = "generate"
RANDOM_SEED = -1  # the seed control's value for "a fresh random seed each run"


def require_gradio():
    """Import Gradio, or say how to install it."""
    try:
        import gradio
    except ImportError:
        raise ImportError(f"the demo needs Gradio, an optional extra: {INSTALL_HINT}") from None
    return gradio


def _no_telemetry() -> None:
    # Gradio and gradio_client read this at call time; an explicit setting by the user wins.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


def model_panel_markdown(models: dict[str, DemoModel]) -> str:
    """A table with one column per model: parameters, context length, dtype, device, caps."""
    infos = {title: m.info() for title, m in models.items()}
    rows = list(next(iter(infos.values())))
    head = "| | " + " | ".join(infos) + " |\n|---|" + "---|" * len(infos) + "\n"
    body = "".join(
        f"| {row} | " + " | ".join(_cell(info[row]) for info in infos.values()) + " |\n"
        for row in rows
    )
    return head + body


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


INTERNAL_ERROR = "Generation failed with an internal error; the server log has the details."


def _streamed(gr, make: Callable[[], Iterator[str]]) -> Iterator[tuple[Any, str]]:
    """Run one request for the UI as (text, status) pairs.

    A failure is shown twice, both readable and never a traceback: in the status line, which
    stays, and as a gr.Error, which pops up in the browser and is what API clients receive.
    Bad input (DemoInputError) and generation's own ValueErrors carry messages meant for users;
    anything else is logged here and reported without details.
    """
    try:
        yield from _timed(gr, make)
        return
    except ValueError as e:
        message = str(e)
    except Exception:
        log.exception("demo: generation failed")
        message = INTERNAL_ERROR
    yield gr.skip(), f"Error: {message}"
    raise gr.Error(message, print_exception=False)


def _timed(gr, make: Callable[[], Iterator[str]]) -> Iterator[tuple[str, Any]]:
    texts = make()  # checks the request before the output is cleared
    start = time.perf_counter()
    text = ""
    yield "", "Generating…"
    # Pieces leave the status alone, so a late one cannot overwrite the Stop button's "Stopped.".
    with contextlib.closing(texts):  # a cancelled run stops decoding at once
        for text in texts:
            yield text, gr.skip()
    yield text, f"Done in {time.perf_counter() - start:.1f} s."


def _sampling(max_new_tokens, sample, temperature, top_k, top_p, seed) -> Sampling:
    seed = None if seed is None or seed == RANDOM_SEED else seed
    return Sampling(max_new_tokens, sample, temperature, top_k, top_p, seed)


def _controls(gr, cap: int, *, max_new_tokens: int, temperature: float, prefix: str) -> list:
    """Max new tokens, the sampling toggle and the sampling controls it enables."""
    max_new = gr.Slider(
        1,
        cap,
        value=min(max_new_tokens, cap),
        step=1,
        label="Max new tokens",
        elem_id=f"{prefix}max-new-tokens",
    )
    sample = gr.Checkbox(
        value=True,
        label="Sampling (off: greedy, always the most likely token)",
        elem_id=f"{prefix}sample",
    )
    with gr.Row():
        temp = gr.Slider(
            0.05,
            2.0,
            value=temperature,
            step=0.05,
            label="Temperature",
            elem_id=f"{prefix}temperature",
        )
        top_k = gr.Slider(
            0, 200, value=50, step=1, label="Top-k (0: off)", elem_id=f"{prefix}top-k"
        )
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id=f"{prefix}top-p")
    seed = gr.Number(  # precision None: the value as sent (precision 0 would round 2.5 to 2)
        value=RANDOM_SEED,
        precision=None,
        step=1,
        minimum=RANDOM_SEED,
        label=f"Seed ({RANDOM_SEED}: random)",
        elem_id=f"{prefix}seed",
    )
    sampling_controls = [temp, top_k, top_p, seed]
    sample.change(
        lambda on: [gr.update(interactive=bool(on)) for _ in sampling_controls],
        inputs=sample,
        outputs=sampling_controls,
        queue=False,
        api_visibility="private",
    )
    return [max_new, sample, temp, top_k, top_p, seed]


def _run_buttons(gr, prefix: str):
    with gr.Row():
        go = gr.Button("Generate", variant="primary", elem_id=f"{prefix}generate")
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}stop")
    return go, stop


def _wire(go, stop, fn, *, inputs, output, status, api_name: str, concurrency: int) -> None:
    event = go.click(
        fn,
        inputs=inputs,
        outputs=[output, status],
        api_name=api_name,
        concurrency_limit=concurrency,
        concurrency_id=GENERATION_QUEUE,  # both tabs share one limit: they share the hardware
        show_progress="minimal",
        show_progress_on=output,  # keeps the status line readable
    )
    stop.click(
        lambda: "Stopped.", outputs=status, cancels=[event], queue=False, api_visibility="private"
    )


def _completion_tab(gr, model: DemoModel, concurrency: int) -> None:
    def complete(prompt, max_new_tokens, sample, temperature, top_k, top_p, seed):
        sampling = _sampling(max_new_tokens, sample, temperature, top_k, top_p, seed)
        yield from _streamed(gr, lambda: model.complete(prompt, sampling))

    with gr.Tab("Completion", id="completion"), gr.Row():
        with gr.Column(scale=1):
            prompt = gr.Textbox(
                label=f"Prompt (up to {model.limits.max_input_tokens:,} tokens)",
                lines=4,
                elem_id="prompt",
            )
            gr.Examples(COMPLETION_EXAMPLES, inputs=prompt, label="Examples")
            controls = _controls(
                gr, model.limits.max_new_tokens, max_new_tokens=64, temperature=0.8, prefix=""
            )
        with gr.Column(scale=1):
            output = gr.Textbox(label="Continuation", lines=12, interactive=False, elem_id="output")
            status = gr.Markdown(elem_id="status")
            go, stop = _run_buttons(gr, "")
    _wire(go, stop, complete, inputs=[prompt, *controls], output=output, status=status,
          api_name="complete", concurrency=concurrency)  # fmt: skip


def _instruct_tab(gr, model: DemoModel, concurrency: int) -> None:
    def instruct(instruction, input_text, max_new_tokens, sample, temperature, top_k, top_p, seed):
        sampling = _sampling(max_new_tokens, sample, temperature, top_k, top_p, seed)
        yield from _streamed(gr, lambda: model.respond(instruction, input_text, sampling))

    with gr.Tab("Instruct", id="instruct"), gr.Row():
        with gr.Column(scale=1):
            instruction = gr.Textbox(label="Instruction", lines=3, elem_id="instruct-instruction")
            input_text = gr.Textbox(label="Input (optional)", lines=3, elem_id="instruct-input")
            gr.Examples(INSTRUCT_EXAMPLES, inputs=[instruction, input_text], label="Examples")
            controls = _controls(
                gr,
                model.limits.max_new_tokens,
                max_new_tokens=256,
                temperature=0.7,
                prefix="instruct-",
            )
        with gr.Column(scale=1):
            output = gr.Textbox(
                label="Response", lines=12, interactive=False, elem_id="instruct-output"
            )
            status = gr.Markdown(elem_id="instruct-status")
            go, stop = _run_buttons(gr, "instruct-")
    _wire(go, stop, instruct, inputs=[instruction, input_text, *controls], output=output,
          status=status, api_name="instruct", concurrency=concurrency)  # fmt: skip


def build_app(
    model: DemoModel,
    *,
    instruct_model: DemoModel | None = None,
    concurrency: int = 1,
    queue_size: int = 16,
    title: str = "gpt124m demo",
) -> Any:
    """The demo as a `gr.Blocks`, queue configured; `launch` serves it.

    API endpoints: `/complete` (prompt, max_new_tokens, sample, temperature, top_k, top_p, seed)
    and, with an instruct model, `/instruct` (instruction, input_text, then the same controls);
    both stream (text, status). A seed of -1 means a fresh random seed; sampling off is greedy.
    """
    gr = require_gradio()
    _no_telemetry()
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if queue_size < 1:
        raise ValueError(f"queue size must be >= 1, got {queue_size}")
    panel = {"Completion": model}
    if instruct_model is not None:
        panel["Instruct"] = instruct_model
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nA GPT-2-class model from the `gpt124m` project.")
        with gr.Accordion("Model", open=True):
            gr.Markdown(model_panel_markdown(panel), elem_id="model-info")
        with gr.Tabs():
            _completion_tab(gr, model, concurrency)
            if instruct_model is not None:
                _instruct_tab(gr, instruct_model, concurrency)
    app.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str) -> None:
    """Refuse a --host that is neither an IP address nor a name this machine resolves.
    Gradio would log the bad address as reachable, then fail with a uvicorn ERROR line and a
    misleading "Cannot find empty port"."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, socket.gaierror) and e.strerror else str(e)
        raise ValueError(
            f"--host {host!r}: not an IP address or a name this machine resolves ({reason})"
        ) from None


def launch(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
) -> str:
    """Serve `app` on host:port (and a public share link only when `share`); returns the URL.

    With `block=False` the server runs in a background thread; stop it with `app.close()`.
    """
    gr = require_gradio()
    _no_telemetry()
    if not is_loopback(host):
        log.warning("demo: listening on %s, so other machines can reach it", host)
    if share:
        log.warning("demo: --share makes the demo public through a Gradio share link")
    try:
        _, local_url, share_url = app.launch(
            server_name=host,
            server_port=port,
            share=share,
            prevent_thread_lock=True,
            show_error=True,
            quiet=True,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            enable_monitoring=False,
            footer_links=["api"],
            theme=gr.themes.Default(),
        )
    except OSError as e:
        raise ValueError(f"cannot serve on {host}:{port} ({e}); check --host and --port") from None
    url = share_url or local_url
    log.info("demo: running on %s%s", local_url, f" and {share_url}" if share_url else "")
    if block:
        app.block_thread()  # until Ctrl-C; it then closes the server
    return url
