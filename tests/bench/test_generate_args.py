"""bench/generate.py refuses a decode that cannot fit the preset's context before building any
model: one line naming the problem, exit code 2, no traceback."""

from .conftest import run_script


def test_prompt_plus_new_tokens_beyond_the_block_is_a_usage_error():
    # tiny's block is 64 tokens: the default 64-token prompt leaves no room for new ones
    done = run_script("generate.py", "--preset", "tiny", "--new-tokens", "4")
    assert done.returncode == 2
    assert "exceeds the tiny preset's block size (64)" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_preset_is_a_usage_error():
    done = run_script("generate.py", "--preset", "gpt5")
    assert done.returncode == 2 and "unknown model preset 'gpt5'" in done.stderr
    assert "Traceback" not in done.stderr
