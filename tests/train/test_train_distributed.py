"""Process-group teardown: all ranks meet before it on success, nobody waits on a failure."""

import contextlib

import pytest
import torch.distributed as dist

from gpt124m.train import distributed


@pytest.mark.parametrize("fails", [False, True])
def test_shutdown_waits_for_the_peers_only_on_the_normal_path(tmp_path, monkeypatch, fails):
    calls = []
    barrier = dist.barrier

    def spy(*args, **kwargs):
        calls.append("barrier")
        return barrier(*args, **kwargs)

    monkeypatch.setattr(dist, "barrier", spy)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    with contextlib.suppress(RuntimeError):
        try:
            if fails:
                raise RuntimeError("this rank failed")
        finally:
            distributed.shutdown()
    assert calls == ([] if fails else ["barrier"])
    assert not dist.is_initialized()
