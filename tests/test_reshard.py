"""A checkpoint written on one mesh restores onto another mesh shape (reshard on restore),
through the trainer's own Checkpointer, with every value and the data position equal."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from audiochat_jax.models.llama import LlamaConfig, init_params
from audiochat_jax.parallel import sharding
from audiochat_jax.train import checkpoint

CFG = LlamaConfig(vocab_size=64, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64,
                  max_seq_len=32, dtype="float32", param_dtype="float32", scan_layers=True)


def _placed(mesh):
    """Llama params (logical names -> this mesh's shardings) + an unnamed counter."""
    boxed = init_params(CFG, jax.random.key(0))
    shardings = sharding.logical_to_sharding(boxed, mesh)
    params = jax.tree.map(jax.device_put, nn.unbox(boxed), shardings)
    return {"params": params, "step": jax.device_put(np.int32(7), sharding.replicated(mesh))}, shardings


@pytest.mark.parametrize("target", [(1, 4, 2), (8, 1, 1)])
def test_checkpoint_from_mesh_222_restores_onto_another_mesh(tmp_path, target):
    source = sharding.make_mesh((2, 2, 2))
    state, _ = _placed(source)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, keep=1, async_save=False)
    ckpt.save(1, state, {"position": 123}, force=True)
    ckpt.close()

    mesh = sharding.make_mesh(target)
    _, shardings = _placed(mesh)
    abstract = {"params": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                       state["params"], shardings),
                "step": jax.ShapeDtypeStruct((), np.int32, sharding=sharding.replicated(mesh))}
    reader = checkpoint.Checkpointer(str(tmp_path / "ckpt"), every_steps=1, keep=1, async_save=False)
    restored, data = reader.restore(reader.latest_step(), abstract)
    reader.close()

    assert data == {"position": 123}
    flat_src = jax.tree_util.tree_leaves_with_path(state)
    flat_dst = dict(jax.tree_util.tree_leaves_with_path(restored))
    flat_abs = dict(jax.tree_util.tree_leaves_with_path(abstract))
    moved = 0
    for path, src in flat_src:
        dst = flat_dst[path]
        assert dst.sharding == flat_abs[path].sharding            # landed on the new mesh's layout
        np.testing.assert_array_equal(np.asarray(dst), np.asarray(src))
        moved += dst.sharding.mesh.shape != src.sharding.mesh.shape
    assert moved == len(flat_src)
    # The per-device pieces really changed shape: the embedding [vocab, embed] is split
    # tensor x fsdp = 2x2 on the source, 2x4 / 1x1 on the targets.
    shard = lambda x: x.addressable_shards[0].data.shape
    assert shard(state["params"]["embedding"]) == (32, 16)
    assert shard(restored["params"]["embedding"]) == {(1, 4, 2): (32, 8), (8, 1, 1): (64, 32)}[target]
