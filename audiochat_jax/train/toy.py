"""``toy``: a 2-layer MLP regressing a fixed random teacher — the loop's own smoke task.

Runs in seconds on any machine, so the loop's machinery (sharded init, donated step,
checkpoints, resume, preemption, metrics, export) can be exercised without the real
models: ``python -m audiochat_jax.train --config configs/smoke_toy.py --workdir /tmp/toy``.
The input is index-based and deterministic (batch ``i`` is drawn from ``seed`` and ``i``),
so the iterator state is one integer and resume is exact.
"""
from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from audiochat_jax.models import model_dir
from audiochat_jax.parallel import sharding
from audiochat_jax.train import tasks


def task_config() -> ml_collections.ConfigDict:
    """The ``config.toy`` section."""
    return ml_collections.ConfigDict(dict(
        in_dim=8, hidden=32, out_dim=4,
        noise=0.01,          # std of the label noise
    ))


class MLP(nn.Module):
    """``[batch, in_dim] -> [batch, out_dim]``."""

    hidden: int
    out_dim: int

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.lecun_normal()
        w1 = self.param("w1", nn.with_logical_partitioning(init, ("embed", "mlp")), (x.shape[-1], self.hidden))
        b1 = self.param("b1", nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)), (self.hidden,))
        w2 = self.param("w2", nn.with_logical_partitioning(init, ("mlp", "embed")), (self.hidden, self.out_dim))
        h = nn.with_logical_constraint(jax.nn.gelu(x @ w1 + b1), ("batch", "act_mlp"))
        return h @ w2


class ToyData:
    """Index-based iterator: batch ``i`` = ``f(seed, i)``; this host's rows of the global batch."""

    def __init__(self, cfg, batch_size: int, seed: int, stream: int = 0):
        self.cfg, self.batch_size, self.seed, self.stream = cfg, batch_size, seed, stream
        teacher = np.random.default_rng([seed, 7919])
        # Scaled so x @ w ~ N(0, 1): a smooth target a 2-layer MLP fits in ~100 steps.
        self.w = (teacher.normal(size=(cfg.in_dim, cfg.out_dim)) / np.sqrt(cfg.in_dim)).astype(np.float32)
        self.index = 0
        n_hosts = jax.process_count()
        if batch_size % n_hosts:
            raise ValueError(f"config.batch_size={batch_size} is not divisible by {n_hosts} hosts")
        per_host = batch_size // n_hosts
        self.rows = slice(jax.process_index() * per_host, (jax.process_index() + 1) * per_host)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.stream, self.index])
        self.index += 1
        x = rng.normal(size=(self.batch_size, self.cfg.in_dim)).astype(np.float32)
        y = np.sin(x @ self.w) + self.cfg.noise * rng.normal(size=(self.batch_size, self.cfg.out_dim))
        return {"x": x[self.rows], "y": y[self.rows].astype(np.float32)}

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


@tasks.register("toy")
def toy_task(config, mesh) -> tasks.Task:
    cfg = config.toy
    model = MLP(cfg.hidden, cfg.out_dim)

    def init(rng):
        return model.init(rng, jnp.zeros((1, cfg.in_dim), jnp.float32))

    def loss(variables, frozen, batch, rng):
        err = model.apply(variables, batch["x"]) - batch["y"]
        mse = jnp.mean(jnp.square(err))
        return mse, {"examples_sum": jnp.asarray(batch["x"].shape[0], jnp.float32)}

    eval_loss = jax.jit(lambda variables, batch: loss(variables, None, batch, None)[0])

    def evaluate(variables, frozen):
        data = ToyData(cfg, config.batch_size, config.seed, stream=1)
        with jax.set_mesh(mesh), sharding.axis_rules():
            losses = [eval_loss(variables, tasks.device_batch(next(data), mesh)) for _ in range(4)]
        return {"loss": float(np.mean(losses))}

    def export(variables, out_dir):
        model_dir.save_model_dir(out_dir, "toy_mlp", cfg.to_dict(), variables["params"])

    return tasks.Task(init=init, loss=loss, evaluate=evaluate, export=export,
                      train_data=lambda: ToyData(cfg, config.batch_size, config.seed))
