"""`gpt124m push`: the dry run (offline), repo-id checks, and the upload calls on a fake client."""

from __future__ import annotations

import json
import shutil
import types

import huggingface_hub
import pytest

from gpt124m.cli import main
from gpt124m.hf import hub
from gpt124m.hf.hub import check_repo_id, plan_upload, push


@pytest.fixture
def export_copy(remote_dir, tmp_path):
    """A private copy of the export, with clutter that must not be uploaded."""
    out = tmp_path / "export"
    shutil.copytree(remote_dir, out)
    (out / ".DS_Store").write_bytes(b"x")
    (out / ".cache" / "huggingface").mkdir(parents=True)
    (out / ".cache" / "huggingface" / "lock").write_text("x")
    return out


class FakeApi:
    """Records what push asks of the Hub."""

    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    public: set = set()  # repos that exist and are public; create_repo leaves them so

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        self.calls.append(("repo_info", repo_id))
        return types.SimpleNamespace(private=repo_id not in self.public)

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="abc",
        )


def test_plan_lists_every_exported_file_with_its_size(export_copy):
    plan = plan_upload(export_copy)
    paths = [f.path for f in plan]
    assert paths == sorted(paths)
    assert {"config.json", "model.safetensors", "README.md", "modeling_gpt124m.py"} <= set(paths)
    assert not any(p.startswith(".") or "/." in p for p in paths)
    sizes = {f.path: f.size for f in plan}
    assert sizes["model.safetensors"] == (export_copy / "model.safetensors").stat().st_size


def test_dry_run_lists_files_and_touches_no_network(export_copy, monkeypatch, capsys, caplog):
    def no_hub(*args, **kwargs):
        raise AssertionError("the dry run must not create a Hub client")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_hub)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    argv = ["push", str(export_copy), "--repo-id", "alice/tiny", "--private", "--dry-run"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "would upload to alice/tiny (private)" in captured.out
    assert "model.safetensors" in captured.out and ".DS_Store" not in captured.out
    for f in plan_upload(export_copy):
        assert f.path in captured.out
    assert f"{len(plan_upload(export_copy))} files, " in captured.out
    # the card of this export loads its own path, not alice/tiny
    assert "re-export with --repo-id alice/tiny" in caplog.text


def test_dry_run_is_quiet_when_the_card_names_the_repo(export_copy, repo_ids, capsys, caplog):
    assert main(["push", str(export_copy), "--repo-id", repo_ids["remote_dir"], "--dry-run"]) == 0
    shown = f"would upload to {repo_ids['remote_dir']} (the owner's default visibility if new)"
    assert shown in capsys.readouterr().out
    assert "re-export" not in caplog.text


@pytest.mark.parametrize("bad", ["tiny", "a/b/c", "alice/", "/tiny", "alice/../x", "al ice/x"])
def test_repo_id_must_be_user_slash_name(bad, export_copy, capsys):
    with pytest.raises(ValueError, match="expected USER/NAME"):
        check_repo_id(bad)
    assert main(["push", str(export_copy), "--repo-id", bad, "--dry-run"]) == 2
    assert "expected USER/NAME" in capsys.readouterr().err


def test_push_refuses_a_directory_that_is_not_an_export(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["push", str(tmp_path), "--repo-id", "alice/x", "--dry-run"]) == 2
    assert "missing model.safetensors, README.md" in capsys.readouterr().err


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _add_a_layer(path):
    config = json.loads(path.read_text())
    model = config.get("model", config)  # ours nests the shape; GPT-2's does not
    model["n_layer"] += 1
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("which", ["remote_dir", "gpt2_dir"])
@pytest.mark.parametrize(
    "damage, error",
    [
        (lambda d: _truncate(d / "model.safetensors", 1000), "not a readable safetensors file"),
        (  # the header intact, the last tensor's bytes cut short
            lambda d: _truncate(
                d / "model.safetensors", (d / "model.safetensors").stat().st_size - 4
            ),
            "not a readable safetensors file",
        ),
        (lambda d: _add_a_layer(d / "config.json"), "tensors do not match config.json (missing: "),
    ],
    ids=["truncated-to-1000-bytes", "last-bytes-cut", "config-has-another-layer"],
)
def test_push_refuses_weights_that_are_unreadable_or_not_the_configs(
    which, damage, error, request, tmp_path, monkeypatch, capsys
):
    """Dry run and real push alike: one line, rc 2, before any Hub client exists."""
    folder = tmp_path / "export"
    shutil.copytree(request.getfixturevalue(which), folder)
    assert main(["push", str(folder), "--repo-id", "alice/tiny", "--dry-run"]) == 0
    capsys.readouterr()
    damage(folder)
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_from_env")
    for dry in (["--dry-run"], []):
        assert main(["push", str(folder), "--repo-id", "alice/tiny", *dry]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"gpt124m push: error: {folder}") and err.count("\n") == 1
        assert error in err
    assert FakeApi.calls == []


def test_push_without_a_token_says_how_to_get_one(export_copy, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    with pytest.raises(ValueError, match="set HF_TOKEN or run `hf auth login`"):
        push(export_copy, "alice/tiny")


def test_push_creates_the_repo_and_uploads_the_folder(export_copy, monkeypatch, capsys):
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_from_env")
    argv = ["push", str(export_copy), "--repo-id", "alice/tiny", "--private"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/alice/tiny/commit/abc"
    (_, token), (_, repo, create_kwargs), _, (_, upload) = FakeApi.calls
    assert token == "hf_from_env"
    assert repo == "alice/tiny"
    assert create_kwargs == {"private": True, "exist_ok": True, "repo_type": "model"}
    assert upload["repo_id"] == "alice/tiny" and upload["folder_path"] == str(export_copy)
    assert upload["ignore_patterns"] == hub.IGNORE_PATTERNS


def test_push_private_never_uploads_to_an_existing_public_repo(export_copy, monkeypatch, capsys):
    """The Hub ignores `private` for a repo that exists; without --private, a new repo takes its
    owner's default (huggingface_hub turns private=False into an explicit "public")."""
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_from_env")
    monkeypatch.setattr(FakeApi, "public", {"alice/tiny"})
    FakeApi.calls = []
    assert main(["push", str(export_copy), "--repo-id", "alice/tiny", "--private"]) == 2
    assert (
        "alice/tiny already exists and is public; nothing was uploaded" in capsys.readouterr().err
    )
    assert not [c for c in FakeApi.calls if c[0] == "upload_folder"]
    FakeApi.calls = []
    assert main(["push", str(export_copy), "--repo-id", "alice/tiny"]) == 0
    created = next(c for c in FakeApi.calls if c[0] == "create_repo")
    assert created[2]["private"] is None


def test_push_offline_is_one_line(export_copy, monkeypatch, capsys):
    """Offline (or the Hub out of reach), the client raises its own many types; one line."""

    class Offline(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise huggingface_hub.errors.OfflineModeIsEnabled(
                "Cannot reach https://huggingface.co/api/repos/create: offline mode is enabled.\n"
                "To disable it, please unset the `HF_HUB_OFFLINE` environment variable."
            )

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_from_env")
    assert main(["push", str(export_copy), "--repo-id", "alice/tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "cannot push to alice/tiny on the Hugging Face Hub: OfflineModeIsEnabled" in err
