"""The transformers baseline the benches time: set up as a careful user trains it."""

import pytest
import torch

from gpt124m.config import get_preset

from .conftest import bench_module


def test_the_training_baseline_is_causal_sdpa_one_graph_and_the_same_loss():
    """Compiled, its attention is SDPA with `is_causal` and no mask (transformers 5.17 built a
    [B, 1, T, T] mask under compile), in one graph, with no KV cache; its loss is the default
    model's, computed here as plain cross-entropy of its logits."""
    pytest.importorskip("transformers")
    baseline = bench_module("_baseline")
    calls, graphs = [], []

    def inspect(gm, example_inputs):
        graphs.append(gm)
        for node in gm.graph.nodes:
            if node.op == "call_function" and "scaled_dot_product_attention" in str(node.target):
                mask = node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)
                calls.append((mask is None, node.kwargs.get("is_causal")))
        return gm.forward

    torch.manual_seed(0)
    model = baseline.transformers_gpt2(get_preset("tiny"), unpadded_training=True).train()
    x = torch.randint(0, 1000, (2, 32), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    out = torch.compile(model, backend=inspect)(x, labels=x)
    assert calls and set(calls) == {(True, True)}
    assert len(graphs) == 1 and out.past_key_values is None
    logits = model(x).logits
    reference = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten())
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-5)
