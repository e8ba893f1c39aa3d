"""Step profiles (train/profile.py): a jax.profiler trace of a jitted train step is read back
and its op time attributed to the model parts that issued the ops, forward and backward —
from the trainer (config.profile) and from bench/align_step.py --profile."""
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from audiochat_jax.train import loop, profile
from test_train_loop import small_config

_BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "align_step.py")


def test_model_part_merges_layers_and_marks_the_backward_pass():
    part = profile.model_part
    assert part("jit(step)/transpose(jvp(AudioEmbedder))/encoder/layers_2/conv/depthwise_conv/slice") == \
        "AudioEmbedder/encoder/conv/depthwise_conv bwd"
    assert part("jit(step)/jvp(Llama.hidden_states)/layers_3/mlp/bld,df->blf/dot_general") == \
        "Llama.hidden_states/mlp"
    assert part("jit(step)/jvp(jit(log_mel))/jit(fft)/fft") == "log_mel/fft"
    assert part("jit(step)/div") == profile.STEP_OPS
    assert part("") == profile.UNNAMED
    # ops XLA combined (e.g. gradient all-reduces): named after the first
    assert part("jit(step)/(transpose(jvp(MLP))/reduce_sum:transpose(jvp(MLP))/dot_general:jvp()/reduce_sum)") == \
        "MLP bwd"


class _Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(256, name="wide")(x))
        return nn.Dense(4, name="head")(x)


def _rows(table: str) -> list[list[str]]:
    """'  12.3 ms  45.6%  _Net/wide bwd' -> ['12.3', 'ms', '45.6%', '_Net/wide', 'bwd']."""
    return [line.split() for line in table.splitlines() if line.startswith("  ") and "more parts" not in line]


def test_bench_profile_attributes_a_steps_op_time_to_its_modules(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("align_step_bench", _BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    net, x = _Net(), jnp.ones((512, 64))
    params = net.init(jax.random.key(0), x)

    def step(p, x):
        grads = jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2))(p)
        return jax.tree.map(lambda a, g: a - 1e-3 * g, p, grads)

    compiled = jax.jit(step).lower(params, x).compile()
    holder = {"p": params}

    def run():
        holder["p"] = compiled(holder["p"], x)
        return holder["p"]

    run.compiled = compiled
    bench.profile_steps(run, str(tmp_path), steps=2)
    rows = _rows(capsys.readouterr().out)
    parts = [r[3] for r in rows]
    assert any(p.endswith("/wide") for p in parts), rows   # the Dense layers' own names
    assert any(p.endswith("/head") for p in parts), rows
    assert any(r[-1] == "bwd" for r in rows), rows         # the gradient's ops are marked
    assert sum(float(r[0]) for r in rows) > 0, rows


def test_trainer_traces_the_configured_steps_and_writes_the_table(tmp_path):
    config = small_config("--config.total_steps=12", "--config.profile.start_step=3", "--config.profile.steps=2")
    assert loop.train(config, str(tmp_path))["status"] == "done"
    traces = [f for _, _, fs in os.walk(tmp_path / "profile") for f in fs if f.endswith(".trace.json.gz")]
    assert len(traces) == 1, traces
    rows = _rows((tmp_path / "profile" / "op_time_by_part.txt").read_text())
    parts = {" ".join(r[3:]) for r in rows}
    assert {"MLP", "MLP bwd"} <= parts, rows   # the toy MLP's forward and its gradient
