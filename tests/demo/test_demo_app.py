"""The demo in-process: caps, input checks, model panel, tabs, error handling, CLI edges."""

from __future__ import annotations

import re
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from gpt124m.cli import build_parser, main
from gpt124m.demo.backend import DemoInputError, DemoModel, Limits, Sampling
from gpt124m.generate import GenerationConfig, generate, generate_text
from gpt124m.loading import load_model
from gpt124m.tokenizer import get_tokenizer

from ..conftest import needs_compiler


@pytest.fixture(scope="module")
def base(demo_models) -> DemoModel:
    return DemoModel(load_model(demo_models[0]), get_tokenizer(), name="base")


def test_default_caps_fit_the_context():
    assert Limits.for_context(1024) == Limits(max_input_tokens=768, max_new_tokens=256)
    assert Limits.for_context(64) == Limits(max_input_tokens=32, max_new_tokens=32)
    assert Limits.for_context(64, max_new_tokens=60) == Limits(4, 60)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "--max-new-tokens must be >= 1, got 0"),
        ({"max_input_tokens": 0}, "--max-input-tokens must be >= 1, got 0"),
        ({"max_input_tokens": -5, "max_new_tokens": 8}, "--max-input-tokens must be >= 1, got -5"),
        ({"max_new_tokens": 64}, "--max-new-tokens 64 leaves no room for a prompt"),
        (
            {"max_new_tokens": 32, "max_input_tokens": 40},
            "--max-input-tokens 40 + --max-new-tokens 32 exceed the model's context length (64)",
        ),
    ],
)
def test_caps_beyond_the_context_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Limits.for_context(64, **kwargs)


NAN, INF = float("nan"), float("inf")  # what the API, unlike the widgets, can send


@pytest.mark.parametrize(
    ("prompt", "sampling", "message"),
    [
        ("  \n", Sampling(16), "Enter a prompt first."),
        ("hi", Sampling(max_new_tokens=33), "Max new tokens must be a whole number between 1"),
        ("hi", Sampling(max_new_tokens=0), "Max new tokens must be a whole number between 1"),
        ("hi", Sampling(max_new_tokens=3.9), "Max new tokens must be a whole number between 1"),
        ("hi", Sampling(max_new_tokens=NAN), "Max new tokens must be a whole number between 1"),
        ("hi", Sampling(16, seed=1.5), "The seed must be a whole number"),
        ("hi", Sampling(16, seed=-1), "The seed must be a whole number"),
        ("hi", Sampling(16, seed=NAN), "The seed must be a whole number"),
        ("hi", Sampling(16, seed=INF), "The seed must be a whole number"),
        ("hi", Sampling(16, seed=True), "The seed must be a whole number"),
        ("hi", Sampling(16, seed=2**63), "The seed must be a whole number"),
        ("hi", Sampling(16, do_sample="false"), "Sampling must be true or false."),
        ("hi", Sampling(16, do_sample=None), "Sampling must be true or false."),
        ("hi", Sampling(16, temperature=0.0), "Temperature must be at least 1e-06"),
        ("hi", Sampling(16, temperature=1e-300), "Temperature must be at least 1e-06"),
        ("hi", Sampling(16, temperature=INF), "Temperature must be at least 1e-06"),
        ("hi", Sampling(16, top_k=2.7), "Top-k must be a whole number"),
        ("hi", Sampling(16, top_k=NAN), "Top-k must be a whole number"),
        ("hi", Sampling(16, top_p=0.0), "Top-p must be above 0"),
        ("hi", Sampling(16, top_p=NAN), "Top-p must be above 0"),
        (" hello" * 33, Sampling(16), "The prompt is too long: 33 tokens; the limit is 32 tokens."),
    ],
)
def test_bad_requests_are_refused_before_any_compute(base, prompt, sampling, message):
    with pytest.raises(DemoInputError) as err:
        base.complete(prompt, sampling)
    assert message in str(err.value)


def test_prompt_at_the_cap_runs_and_fills_the_context(base):
    prompt = " hello" * 32
    text = list(base.complete(prompt, Sampling(max_new_tokens=32, do_sample=False)))[-1]
    expected = generate_text(base.model, base.tokenizer, [prompt], GenerationConfig(32))[0]
    assert text == expected


@needs_compiler
def test_compiled_requests_at_once_each_decode_as_alone(base):
    """`demo --compile --concurrency 2`: requests running at the same time in server threads
    share one compiled step but not its cache, so each gets what an eager request gets."""
    compiled = DemoModel(base.model, base.tokenizer, name="base", compiled=True)
    prompts = ["Once upon a time", "The weather today", "In 1905, Einstein", "Hello, my name"]
    greedy = Sampling(max_new_tokens=24, do_sample=False)
    expected = [list(base.complete(p, greedy))[-1] for p in prompts]
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(lambda p: list(compiled.complete(p, greedy))[-1], prompts))
    assert got == expected
    assert len(set(expected)) == len(prompts)


def test_greedy_ignores_the_sampling_controls(base):
    cfg = base.generation_config(Sampling(8, False, temperature=0.01, top_k=3, top_p=0.1))
    assert cfg.greedy
    outputs = {
        list(base.complete("Hello", Sampling(8, False, temperature=t, top_k=k, seed=s)))[-1]
        for t, k, s in [(0.1, 1, 0), (2.0, 0, 7), (1.0, 50, None)]
    }
    assert len(outputs) == 1


def test_stream_grows_piece_by_piece(base):
    texts = list(base.complete("Once upon a time", Sampling(16, True, seed=3)))
    assert len(texts) > 1
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))


def test_instruct_template_must_be_known(base):
    with pytest.raises(ValueError, match="unknown template 'chatml'"):
        DemoModel(base.model, base.tokenizer, template="chatml")


def test_model_panel_shows_size_context_dtype_and_device(base):
    pytest.importorskip("gradio")
    from gpt124m.demo.app import model_panel_markdown

    table = model_panel_markdown({"Completion": base})
    n = base.model.num_params()
    for fact in (
        f"{n:,}",
        "| Context length | 64 tokens |",
        "| dtype | float32 |",
        "| Device | cpu |",
    ):
        assert fact in table
    assert "| Caps per request | 32 prompt tokens, 32 new tokens |" in table


def test_instruct_tab_only_with_an_instruct_model(base):
    pytest.importorskip("gradio")
    from gpt124m.demo import build_app

    def tabs_and_endpoints(app):
        config = app.get_config_file()
        tabs = [c["props"]["label"] for c in config["components"] if c["type"] == "tabitem"]
        public = {d["api_name"] for d in config["dependencies"] if d["api_visibility"] == "public"}
        return tabs, public

    assert tabs_and_endpoints(build_app(base)) == (["Completion"], {"complete"})
    assert tabs_and_endpoints(build_app(base, instruct_model=base)) == (
        ["Completion", "Instruct"],
        {"complete", "instruct"},
    )


def test_internal_failure_reaches_the_ui_without_details(base, monkeypatch):
    gr = pytest.importorskip("gradio")
    from gpt124m.demo import build_app

    app = build_app(base)
    complete = next(f.fn for f in app.fns.values() if f.api_name == "complete")

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA exploded at /home/secret/model.py line 7")

    monkeypatch.setattr(base.model, "forward", broken)
    run = complete("Hello", 4, False, 0.8, 50, 1.0, -1)
    assert next(run) == ("", "Generating…")
    _, status = next(run)
    with pytest.raises(gr.Error) as err:
        next(run)
    assert "internal error" in err.value.message
    assert status == f"Error: {err.value.message}"
    assert "secret" not in status and "CUDA" not in status


def test_bad_input_becomes_a_gradio_error_with_the_message(base):
    gr = pytest.importorskip("gradio")
    from gpt124m.demo import build_app

    app = build_app(base)
    complete = next(f.fn for f in app.fns.values() if f.api_name == "complete")
    run = complete(" hello" * 33, 4, False, 0.8, 50, 1.0, -1)
    message = "The prompt is too long: 33 tokens; the limit is 32 tokens."
    assert next(run)[1] == f"Error: {message}"  # the status line, output left as it was
    with pytest.raises(gr.Error) as err:
        next(run)
    assert err.value.message == message


def test_default_host_is_loopback():
    from gpt124m.cli.demo import DemoOptions
    from gpt124m.flags import from_args

    opts = from_args(build_parser().parse_args(["demo", "--model", "m"]), DemoOptions)
    assert (opts.host, opts.port, opts.share) == ("127.0.0.1", 7860, False)


def test_without_gradio_the_command_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` fail
    code = main(["demo", "--model", str(tmp_path / "no-such-model")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Gradio" in err and 'pip install -e ".[demo]"' in err and "gpt124m[demo]" in err
    assert "no-such-model" not in err  # checked before any model is loaded


def test_cli_refuses_caps_beyond_the_context(demo_models, capsys):
    pytest.importorskip("gradio")
    code = main(["demo", "--model", str(demo_models[0]), "--max-new-tokens", "60",
                 "--max-input-tokens", "10", "--device", "cpu"])  # fmt: skip
    assert code == 2
    assert "exceed the model's context length (64)" in capsys.readouterr().err


def test_cli_blames_the_cap_actually_at_fault(demo_models, capsys):
    """--max-input-tokens 0 said "max new tokens (32) leaves no room for a prompt"."""
    pytest.importorskip("gradio")
    argv = ["demo", "--model", str(demo_models[0]), "--device", "cpu", "--max-input-tokens", "0"]
    assert main(argv) == 2
    assert (
        capsys.readouterr().err == "gpt124m demo: error: --max-input-tokens must be >= 1, got 0\n"
    )


def fake_resolver(monkeypatch, names: set[str]) -> list[str]:
    """socket.getaddrinfo knowing only `names` (no DNS in a test); returns the hosts asked."""
    import socket

    asked = []

    def getaddrinfo(host, *args, **kwargs):
        asked.append(host)
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.7", 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize("host", ["999.1.1.1", "", "[::1]", "demo box"])
def test_cli_refuses_a_host_it_cannot_listen_on_before_loading(host, monkeypatch, capsys, tmp_path):
    """999.1.1.1 was logged as "listening ..., so other machines can reach it", then failed in
    uvicorn and Gradio's words ("Cannot find empty port")."""
    pytest.importorskip("gradio")
    from gpt124m.demo import app

    fake_resolver(monkeypatch, {"demo-box.lan"})
    monkeypatch.setattr(app, "launch", lambda *a, **kw: pytest.fail("launched"))
    argv = ["demo", "--model", str(tmp_path / "no-such-model"), "--host", host]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"gpt124m demo: error: --host {host!r}: not an IP address or a name this machine "
        "resolves (Name or service not known)\n"
    )  # one line, and about the host: the missing model was never reached


def test_cli_listens_on_any_ip_address_or_resolvable_name(demo_models, monkeypatch):
    pytest.importorskip("gradio")
    from gpt124m.demo import app

    asked = fake_resolver(monkeypatch, {"demo-box.lan"})
    hosts = []
    monkeypatch.setattr(app, "launch", lambda a, **kw: hosts.append(kw["host"]))
    for host in ("0.0.0.0", "::", "192.168.1.20", "demo-box.lan"):
        assert (
            main(["demo", "--model", str(demo_models[0]), "--device", "cpu", "--host", host]) == 0
        )
    assert hosts == ["0.0.0.0", "::", "192.168.1.20", "demo-box.lan"]
    assert asked == ["demo-box.lan"]  # addresses are taken as they are, only names are looked up


def test_cli_refuses_port_zero(demo_models, capsys):
    """Gradio checks its server at the port it was given: 0 ended in a traceback."""
    pytest.importorskip("gradio")
    assert main(["demo", "--model", str(demo_models[0]), "--port", "0"]) == 2
    assert "--port must be in 1..65535, got 0" in capsys.readouterr().err


def test_cli_template_needs_an_instruct_model(demo_models, capsys):
    pytest.importorskip("gradio")
    code = main(["demo", "--model", str(demo_models[0]), "--template", "alpaca"])
    assert code == 2
    assert "--template applies to --instruct-model" in capsys.readouterr().err


def test_models_are_named_by_run_or_repo(demo_models, tmp_path, monkeypatch, caplog):
    """`gpt124m demo --model runs/quickstart/model` shows "quickstart", not "model"."""
    pytest.importorskip("gradio")
    import shutil

    from gpt124m.demo import app
    from gpt124m.demo.backend import display_name

    run = tmp_path / "runs" / "quickstart"
    shutil.copytree(demo_models[0], run / "model")
    shutil.copytree(demo_models[0], run / "checkpoints" / "step_0000080")
    shutil.copytree(demo_models[1], tmp_path / "my-instruct")
    launched = {}
    monkeypatch.setattr(app, "launch", lambda a, **kw: launched.update(app=a))
    argv = ["demo", "--model", str(run / "model"), "--device", "cpu"]
    with caplog.at_level("INFO", logger="gpt124m.cli.demo"):
        assert main([*argv, "--instruct-model", str(tmp_path / "my-instruct")]) == 0
    assert launched
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "completion model: Model quickstart;" in said
    assert "instruct model (alpaca template): Model my-instruct;" in said
    assert display_name(str(run / "checkpoints" / "step_0000080")) == "quickstart (step 80)"
    assert display_name("samkeet/GPT_124M") == "samkeet/GPT_124M"
    monkeypatch.chdir(run)
    assert display_name("model") == "quickstart"


@pytest.mark.parametrize("seed", [2**53 + 1, 2**63 - 1, "12345"])
def test_any_seed_in_range_runs_as_gpt124m_generate_runs_it(base, seed):
    """Ints stay exact (a float rounds seeds above 2**53 to a neighbour's text)."""
    cfg = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.0, seed=int(seed))
    expected = generate_text(base.model, base.tokenizer, ["hi"], cfg)[0]
    sampling = Sampling(8, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, seed=seed)
    assert list(base.complete("hi", sampling))[-1] == expected


def test_instruct_reads_end_of_text_as_the_text_sft_trained_on(tiny_model):
    """As `gpt124m chat`: `<|endoftext|>` in an instruction is text, as in the SFT examples."""
    from gpt124m.sft.data import Example, encode_examples

    tok = get_tokenizer()
    instruction = "Say<|endoftext|>hi"
    example = encode_examples([Example(instruction, "", "x")])[0]
    trained = example.tokens[: example.prompt_len].tolist()
    expected = tok.decode(generate(tiny_model, [trained], GenerationConfig(max_new_tokens=8))[0])
    demo = DemoModel(tiny_model, tok)
    assert list(demo.respond(instruction, "", Sampling(8, False)))[-1] == expected
    as_prompt = list(demo.complete(tok.decode(trained), Sampling(8, False)))[-1]
    assert as_prompt != expected  # precondition: a bare prompt reads the token
