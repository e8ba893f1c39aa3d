"""python -m audiochat_jax.train --config configs/smoke_toy.py --workdir /tmp/smoke_toy

The trainer's own smoke run: a 2-layer MLP regressing a random teacher (train/toy.py) for
200 steps in seconds on a CPU; the loss falls from ~0.5 to ~0.1 (label noise and a 32-unit MLP set the floor), then WORKDIR/model holds
the exported params. Used by tests/test_train_*.py to exercise checkpoint/resume/SIGTERM.
Args (comma-separated): ``sharded`` puts it on a (data=2, fsdp=2, tensor=2) mesh (needs 8
devices, e.g. XLA_FLAGS=--xla_force_host_platform_device_count=8).
"""
from audiochat_jax.train import loop, toy


def get_config(arg: str = ""):
    args = set(filter(None, arg.split(",")))
    c = loop.base_config()
    c.task = "toy"
    c.total_steps = 200
    c.batch_size = 32
    c.log_every = 20
    c.optimizer.learning_rate = 1e-2
    c.optimizer.warmup_steps = 10
    c.checkpoint.every_steps = 50
    c.toy = toy.task_config()
    if "sharded" in args:
        c.mesh_shape = (2, 2, 2)
    return c
