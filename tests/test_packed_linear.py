"""Frozen float32 linear layers computed on weights packed once for oneDNN give F.linear's outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from prost_lightning.agents.packed_linear import PackedLinears, packable, packed_product

pytestmark = pytest.mark.skipif(not packable(torch.ones(2, 2)), reason="this torch build cannot pack weights")


def _ops(fn) -> set[str]:
    """Names of the aten/mkldnn ops ``fn`` ran."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def _model(dtype=torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 96), torch.nn.GELU(), torch.nn.Linear(96, 48, bias=False))
    return model.to(dtype).requires_grad_(False)


@pytest.mark.parametrize("shape", [(1, 1, 40), (3, 5, 40), (9, 40)])
def test_packed_layers_compute_f_linear_on_the_packed_weights(shape):
    model = _model()
    x = torch.randn(shape)
    expected = model(x)
    packed = PackedLinears(model)
    with torch.no_grad(), packed.installed():
        got = model(x)
        ran = _ops(lambda: model(x))
    assert packed.packed == 2
    assert "mkldnn::_linear_pointwise" in ran and "aten::linear" not in ran  # the packed path, not F.linear
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert "forward" not in model[0].__dict__  # the layer's own forward is back
    assert "aten::linear" in _ops(lambda: model(x))


def test_a_weight_changed_in_place_is_packed_again_and_a_trained_one_not_at_all():
    model = _model()
    x = torch.randn(4, 40)
    packed = PackedLinears(model)
    with torch.no_grad(), packed.installed():
        before = model(x)
    with torch.no_grad():
        model[2].weight.mul_(3.0)  # what an optimizer step on it would do
    with torch.no_grad(), packed.installed():
        after = model(x)
    assert torch.allclose(after, 3.0 * before, rtol=1e-5, atol=1e-6)
    model[0].weight.requires_grad_(True)  # trained weights change every step: computed as they are
    with torch.no_grad():
        reference = model(x)
        with packed.installed():
            assert packed.packed == 1 and "forward" not in model[0].__dict__ and "forward" in model[2].__dict__
            assert torch.allclose(model(x), reference, rtol=1e-5, atol=1e-6)


def test_only_float32_cpu_weights_wide_enough_are_packed():
    assert PackedLinears(_model(torch.float64)).layers == []
    assert PackedLinears(_model(torch.bfloat16)).layers == []
    assert PackedLinears(torch.nn.Linear(96, 8)).layers == []  # a LoRA factor of rank 8
    weight = torch.randn(8, 4, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    product = packed_product(weight)
    assert torch.equal(product(x), F.linear(x, weight))  # not packable: F.linear itself
    weight32 = weight.float()
    unpacked = packed_product(weight32, pack=False)
    assert "mkldnn::_linear_pointwise" not in _ops(lambda: unpacked(x.float()))
    assert "mkldnn::_linear_pointwise" in _ops(lambda: packed_product(weight32)(x.float()))


def test_a_packing_that_fails_half_way_leaves_every_layer_as_it_was(monkeypatch):
    import prost_lightning.agents.packed_linear as module

    model = _model()
    made = []

    def failing(weight, pack=True):
        if made:
            raise RuntimeError("out of memory")
        made.append(weight)
        return packed_product(weight, pack)

    monkeypatch.setattr(module, "packed_product", failing)
    with pytest.raises(RuntimeError, match="out of memory"), PackedLinears(model).installed():
        pass
    assert len(made) == 1  # the first layer was packed and installed before the second failed
    assert all("forward" not in layer.__dict__ for layer in model)
