"""Unrolled <-> scanned parameter layouts (models/layer_stack.py): arrays and logical-axis boxes."""
import flax.linen as nn
import numpy as np
import pytest

from audiochat_jax.models import layer_stack


def _unrolled(n=3, boxed=False):
    rng = np.random.default_rng(0)
    tree = {"embed": rng.standard_normal((5, 2)).astype(np.float32)}
    for i in range(n):
        kernel = rng.standard_normal((2, 4)).astype(np.float32)
        tree[f"layers_{i}"] = {"mlp": {"kernel": nn.Partitioned(kernel, names=("embed", "mlp")) if boxed else kernel}}
    return tree


def test_stack_puts_layers_on_a_leading_axis_and_unstack_restores_them():
    tree = _unrolled()
    stacked = layer_stack.stack_layers(tree)
    assert sorted(stacked) == ["embed", "layers"] and stacked["layers"]["mlp"]["kernel"].shape == (3, 2, 4)
    np.testing.assert_array_equal(stacked["layers"]["mlp"]["kernel"][2], tree["layers_2"]["mlp"]["kernel"])
    back = layer_stack.unstack_layers(stacked)
    assert sorted(back) == sorted(tree)
    for i in range(3):
        np.testing.assert_array_equal(back[f"layers_{i}"]["mlp"]["kernel"], tree[f"layers_{i}"]["mlp"]["kernel"])
    np.testing.assert_array_equal(back["embed"], tree["embed"])
    # Trees without layers (e.g. a batch_stats collection of a layer-norm model) pass through.
    assert layer_stack.stack_layers({"embed": tree["embed"]}).keys() == {"embed"}
    assert layer_stack.unstack_layers({"embed": tree["embed"]}).keys() == {"embed"}


def test_boxes_gain_and_lose_the_leading_layers_axis_name():
    stacked = layer_stack.stack_layers(_unrolled(boxed=True))
    box = stacked["layers"]["mlp"]["kernel"]
    assert isinstance(box, nn.Partitioned) and box.names == ("layers", "embed", "mlp") and box.value.shape == (3, 2, 4)
    back = layer_stack.unstack_layers(stacked)["layers_1"]["mlp"]["kernel"]
    assert isinstance(back, nn.Partitioned) and back.names == ("embed", "mlp") and back.value.shape == (2, 4)


def test_gaps_and_mixed_layouts_are_refused():
    tree = _unrolled()
    del tree["layers_1"]
    with pytest.raises(ValueError, match="not layers_0 ... layers_1"):
        layer_stack.stack_layers(tree)
    mixed = dict(_unrolled(), layers={"mlp": {"kernel": np.zeros((3, 2, 4))}})
    with pytest.raises(ValueError, match="mixed layouts"):
        layer_stack.stack_layers(mixed)
