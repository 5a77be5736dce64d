"""A hub dataset is read at one commit, recorded in the manifest: a resume reads that commit even
after the dataset moved on, so two versions are never spliced into one set of shards."""

import json
import types

import pytest

from gpt124m.data.prepare import PrepareConfig, prepare

from .test_data_prepare import DOCS, all_tokens, expected_tokens

OLD, NEW = "a" * 40, "b" * 40
VERSIONS = {OLD: DOCS, NEW: [f"Rewritten: {d}" for d in DOCS]}


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """The hub, faked where the network would be: `main` names a commit, each commit its rows."""
    datasets = pytest.importorskip("datasets")
    huggingface_hub = pytest.importorskip("huggingface_hub")
    state = types.SimpleNamespace(main=OLD, streamed=[], offline=False)

    def dataset_info(self, repo_id, revision=None, **kwargs):
        assert repo_id == "someone/corpus"
        if state.offline:
            raise ConnectionError("no network")
        sha = state.main if revision in (None, "main") else revision
        if sha not in VERSIONS:
            raise huggingface_hub.errors.RevisionNotFoundError(f"no revision {revision}")
        return types.SimpleNamespace(sha=sha)

    def load_dataset(path, name=None, split=None, streaming=False, revision=None):
        state.streamed.append(revision)
        return [
            {"text": text} for text in VERSIONS[revision or state.main]
        ]  # None: the main branch

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    monkeypatch.chdir(tmp_path)  # "someone/corpus" is no local folder
    return state


def run(out, **kw):
    cfg = PrepareConfig(source="someone/corpus", out_dir=str(out), hf_config=None, workers=1,
                        progress=False, shard_tokens=300, val_tokens=100, **kw)  # fmt: skip
    return prepare(cfg)


def test_a_resume_reads_the_commit_the_first_run_recorded(hub, tmp_path):
    out = tmp_path / "out"
    manifest = run(out)
    assert manifest["settings"]["source"]["revision"] == OLD and hub.streamed == [OLD]
    # interrupted after its first shards; meanwhile the dataset moved on
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    data["complete"], data["shards"] = False, data["shards"][:2]
    path.write_text(json.dumps(data))
    hub.main = NEW
    resumed = run(out)
    assert hub.streamed == [OLD, OLD]
    assert (all_tokens(out, resumed) == expected_tokens(VERSIONS[OLD])).all()
    # a new run reads the newest commit; asking for another one in the old folder is refused
    assert run(tmp_path / "fresh")["settings"]["source"]["revision"] == NEW
    with pytest.raises(ValueError, match="other settings or another source"):
        run(out, revision=NEW)
    with pytest.raises(ValueError, match="--revision v9: not found for dataset someone/corpus"):
        run(tmp_path / "typo", revision="v9")
    # the recorded commit needs no lookup: a resume offline still reads it
    data["complete"], data["shards"] = False, data["shards"][:2]
    path.write_text(json.dumps(data))
    hub.offline = True
    assert (all_tokens(out, run(out)) == expected_tokens(VERSIONS[OLD])).all()
    with pytest.raises(ValueError, match="--revision main: only a hub dataset id has commits"):
        prepare(PrepareConfig(source="builtin-copy", out_dir=str(tmp_path / "local"),
                              revision="main", progress=False))  # fmt: skip


def test_a_first_run_that_could_not_look_up_its_commit_still_resumes(hub, tmp_path, caplog):
    out = tmp_path / "out"
    hub.offline = True
    run(out)
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    assert data["settings"]["source"]["revision"] is None
    data["complete"], data["shards"] = False, data["shards"][:2]
    path.write_text(json.dumps(data))
    hub.offline = False
    with caplog.at_level("WARNING"):
        resumed = run(out)
    assert "recorded no commit of the dataset; resuming at the newest" in caplog.text
    assert (all_tokens(out, resumed) == expected_tokens(DOCS)).all()


def test_a_manifest_from_before_revisions_still_resumes(hub, tmp_path):
    out = tmp_path / "out"
    run(out)
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    del data["settings"]["source"]["revision"]
    data["complete"], data["shards"] = False, data["shards"][:2]
    path.write_text(json.dumps(data))
    resumed = run(out)
    assert (all_tokens(out, resumed) == expected_tokens(DOCS)).all()


def test_offline_the_commit_is_unknown_and_said_so(hub, monkeypatch, tmp_path, caplog):
    import huggingface_hub

    def offline(self, repo_id, revision=None, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", offline)
    with caplog.at_level("WARNING"):
        manifest = run(tmp_path / "out", max_tokens=200)
    assert manifest["settings"]["source"]["revision"] is None and hub.streamed == [None]
    assert "could not look up the current commit of someone/corpus" in caplog.text


def test_a_resumed_stream_starts_where_it_stood_not_from_the_first_document(tmp_path, monkeypatch):
    """A hub stream records its position (datasets' own state) with each shard: a resume near
    the end of FineWeb-Edu opens the file it stood in, instead of streaming and dropping every
    document before it. The shards equal an uninterrupted run's."""
    datasets = pytest.importorskip("datasets")
    from gpt124m.data import encoding

    from .test_data_prepare import write_parquet

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(encoding, "CHUNK_DOCS", 5)  # many chunks, so a state after each
    repo = tmp_path / "ds"
    (repo / "data").mkdir(parents=True)
    files = [
        [f"File {f}, document {d}: " + "words " * (5 + d) for d in range(20)] for f in range(3)
    ]
    for f, docs in enumerate(files):
        write_parquet(repo / "data" / f"train-{f:05d}-of-00003.parquet", docs)
    (repo / "data" / "test-00000-of-00001.parquet").write_bytes(
        (repo / "data" / "train-00000-of-00003.parquet").read_bytes()
    )
    (repo / "README.md").write_text("---\nlicense: mit\n---\n")
    every = [d for docs in files for d in docs]

    def config(out):
        return PrepareConfig(source=str(repo), out_dir=str(out), hf_config=None, workers=1,
                             progress=False, shard_tokens=400, val_tokens=200)  # fmt: skip

    out = tmp_path / "out"
    straight = prepare(config(out))
    assert (all_tokens(out, straight) == expected_tokens(every)).all()
    # interrupted after its third shard, which ended in the third file
    path = out / "manifest.json"
    data = json.loads(path.read_text())
    end = data["shards"][2]["end"]
    assert end["stream"]["document"] <= end["document"] and end["document"] > 40
    data["complete"], data["shards"] = False, data["shards"][:3]
    path.write_text(json.dumps(data))
    yielded = []
    real = datasets.IterableDataset.__iter__

    def counted(self):
        for row in real(self):
            yielded.append(row)
            yield row

    monkeypatch.setattr(datasets.IterableDataset, "__iter__", counted)
    resumed = prepare(config(out))
    assert (all_tokens(out, resumed) == expected_tokens(every)).all()
    assert resumed["shards"] == straight["shards"]
    skipped = end["document"] - end["stream"]["document"]
    assert len(yielded) == len(every) - end["document"] + skipped  # none from before the state
    # a state another version of datasets wrote is not trusted: read from the start, counted
    data["shards"][2]["end"]["stream"]["state"]["datasets"] = "0.0.0"
    path.write_text(json.dumps(data))
    yielded.clear()
    again = prepare(config(out))
    assert [s["sha256"] for s in again["shards"]] == [s["sha256"] for s in straight["shards"]]
    assert len(yielded) == len(every)
