"""The one rules table: mesh construction and logical -> mesh resolution."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from audiochat_jax.parallel import sharding


class _Dense(nn.Module):
    name_in: str = "embed"
    name_out: str = "mlp"

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(), (self.name_in, self.name_out)), (x.shape[-1], 16))
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (16,))
        return x @ kernel * scale


def test_make_mesh_fills_minus_one_with_remaining_devices(n_devices):
    mesh = sharding.make_mesh((-1, 2, 2))
    assert mesh.axis_names == sharding.MESH_AXES
    assert dict(mesh.shape) == {"data": n_devices // 4, "fsdp": 2, "tensor": 2}


def test_make_mesh_rejects_shapes_that_do_not_cover_the_devices(n_devices):
    with pytest.raises(ValueError, match="needs 3 devices"):
        sharding.make_mesh((3, 1, 1))
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh((-1, -1, 1))


def test_weights_resolve_through_the_rules_table():
    mesh = sharding.make_mesh((2, 2, 2))
    abstract = jax.eval_shape(_Dense().init, jax.random.key(0), jnp.zeros((4, 8)))
    shardings = sharding.logical_to_sharding(abstract, mesh)
    assert shardings["params"]["kernel"].spec == P("fsdp", "tensor")
    assert shardings["params"]["scale"].spec == P(None)
    # Params are born sharded: jit(init) with these out_shardings places every shard.
    params = jax.jit(_Dense().init, out_shardings=shardings)(jax.random.key(0), jnp.zeros((4, 8)))
    kernel = params["params"]["kernel"].unbox() if hasattr(params["params"]["kernel"], "unbox") \
        else params["params"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")


def test_unknown_logical_name_is_an_error_not_replication():
    mesh = sharding.make_mesh((-1, 1, 1))
    abstract = jax.eval_shape(_Dense(name_out="hidden").init, jax.random.key(0), jnp.zeros((4, 8)))
    with pytest.raises(ValueError, match="'hidden' has no rule"):
        sharding.logical_to_sharding(abstract, mesh)


def test_batch_sharding_splits_batch_over_data_and_fsdp():
    mesh = sharding.make_mesh((2, 2, 2))
    assert sharding.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)
