"""Two processes on localhost (jax.distributed over CPU collectives, 4 fake devices each)
run the align step on a (2, 2, 2) mesh and get the losses and parameters of one process
with 8 devices: multi-host training is the same computation."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from align_fixtures import make_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")

# One worker: joins the cluster (audiochat_jax.distributed, from JAX_* env), builds the align
# task on the mesh, feeds the same global batches (each process supplies exactly its devices'
# rows via make_array_from_callback), runs the donated, sharded trainer step, and process 0
# saves losses + the gathered trained params.
WORKER = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[3])
from audiochat_jax import distributed
distributed.initialize()
import jax
from jax.experimental import multihost_utils
from align_fixtures import align_config
from audiochat_jax.data.input import InputConfig
from audiochat_jax.parallel import sharding
from audiochat_jax.train import align, loop, optimizer
world = json.loads(sys.argv[1])
config = align_config(world, "--config.total_steps=10", "--config.optimizer.eps=1e-3", "--config.batch_size=8",
                      "--config.mesh_shape=(2, 2, 2)", "--config.align.kl_weight=0.5")
mesh = sharding.make_mesh(config.mesh_shape)
task = align.align_task(config, mesh)
tx, schedule = optimizer.make_optimizer(config, task.frozen_patterns)
state, _, shardings = loop.init_train_state(task, tx, mesh, config.seed)
step = loop.jit_train_step(task, tx, schedule, shardings, mesh)
batches = [dict(np.load(p)) for p in sys.argv[4:]]
losses = []
with jax.set_mesh(mesh), sharding.axis_rules():
    for b in batches:
        g = {k: jax.make_array_from_callback(v.shape, sharding.batch_sharding(mesh, v.ndim), lambda i, v=v: v[i])
             for k, v in b.items()}
        state, m = step(state, task.frozen, g)
        losses.append(float(m["loss"]))
params = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), state.params)
if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(sys.argv[2], losses=np.array(losses), **flat)
print("process", jax.process_index(), "of", jax.process_count(), "devices", jax.local_device_count(), losses)
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _batches(world, tmp_path, n=3):
    """n global batches of 8 rows from the world's train split, read by one host."""
    from align_fixtures import align_config
    from audiochat_jax.data.input import InputConfig, SpeechInput
    from audiochat_jax.train.align import _load_response_tables, select_targets
    from audiochat_jax.text.chat_template import audio_prompt_parts
    config = align_config(world)
    a = config.align
    # The align task's own targets: each with the default prompt around the content.
    targets, _ = select_targets(_load_response_tables(a.responses), *audio_prompt_parts(world["tok"]))
    # The toy train split has 4 utterances: a global batch is two host batches of 4.
    data = SpeechInput(InputConfig(data_dir=a.data_dir, split="train", batch_size=4, buckets=tuple(a.buckets),
                                   max_label_length=a.max_label_length, max_response_length=a.max_response_length,
                                   max_prefix_length=a.max_prefix_length, max_suffix_length=a.max_suffix_length,
                                   shuffle=True, shuffle_buffer=16, seed=0, repeat=True),
                       tokenize=world["tok"].encode, responses=targets,
                       process_index=0, process_count=1)
    paths = []
    for i in range(n):
        halves = [next(data), next(data)]
        b = {k: np.concatenate([h[k] for h in halves]) for k in halves[0]
             if np.asarray(halves[0][k]).dtype.kind in "biuf"}
        paths.append(str(tmp_path / f"batch{i}.npz"))
        np.savez(paths[-1], **b)
    data.close()
    return paths


def _run(world, out, batches, n_procs, devices_each):
    world = {k: v for k, v in world.items() if isinstance(v, str)}
    port = _free_port()
    # Output to files, not pipes: a worker blocked on a full pipe would stall the other in a
    # collective.
    procs, logs = [], []
    for pid in range(n_procs):
        env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
        if n_procs > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(n_procs),
                       JAX_PROCESS_ID=str(pid))
        logs.append((open(f"{out}.{pid}.out", "w+"), open(f"{out}.{pid}.err", "w+")))
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(world), out, TESTS, *batches],
                                      cwd=REPO, env=env, stdout=logs[-1][0], stderr=logs[-1][1], text=True))
    texts = []
    for p, (o, e) in zip(procs, logs):
        p.wait(timeout=900)
        o.seek(0), e.seek(0)
        texts.append(o.read())
        assert p.returncode == 0, e.read()[-3000:]
    return texts


def test_two_processes_equal_one(tmp_path):
    world = make_world(tmp_path / "world")
    batches = _batches(world, tmp_path)
    multi = _run(world, str(tmp_path / "multi.npz"), batches, 2, 4)
    assert "process 0 of 2 devices 4" in multi[0] and "process 1 of 2 devices 4" in multi[1]
    single = _run(world, str(tmp_path / "single.npz"), batches, 1, 8)
    assert "process 0 of 1 devices 8" in single[0]
    a, b = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert sorted(a.files) == sorted(b.files)
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=0, atol=1e-5)
    # The steps really trained (the first step may run at warmup lr 0 on the same 4
    # utterances, so only later losses must move).
    assert len(set(np.round(a["losses"], 4))) > 1
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=k)
