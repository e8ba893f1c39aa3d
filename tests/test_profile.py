"""Step profiles (train/profile.py): a jax.profiler trace of a jitted train step is read back
and its op time attributed to the model parts that issued the ops, forward and backward —
from the trainer (config.profile) and from bench/align_step.py --profile; GPU traces; the
bench's --set overrides."""
import importlib.util
import os
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

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
    # scanned layers (nn.scan's while loop) with remat: the recomputed forward is its own part
    scanned = "jit(step)/transpose(jvp(Llama))/Llama.hidden_states/while/body/closed_call/checkpoint/"
    assert part(scanned + "layers/mlp/bld,df->blf/dot_general") == "Llama.hidden_states/layers/mlp bwd"
    assert part(scanned + "rematted_computation/layers/attn/vmap()/exp") == "Llama.hidden_states/layers/attn remat"
    assert part("checkpoint/rematted_computation/layers/attn/vmap()/reduce_sum") == "layers/attn remat"
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


def test_copied_donated_arrays_names_the_donated_arrays_the_compiled_step_copies():
    # Two ways a donated array escapes an in-place update, each next to its fix.
    # 1. `m` is overwritten by the second select while the first recomputes `u` from the old
    #    `m`, and nothing orders the two: XLA copies the input `m` first. In a conditional
    #    branch (as train/loop.py's step runs the update) nothing is copied.
    def selected(p, m, g):
        new_m = 0.9 * m + g
        u = new_m / (1 + p * p)
        ok = jnp.isfinite(jnp.sum(g))
        return jnp.where(ok, p - u, p), jnp.where(ok, new_m, m), jnp.sum(u)

    def conditional(p, m, g):
        def update(operand):
            p, m = operand
            new_m = 0.9 * m + g
            u = new_m / (1 + p * p)
            return p - u, new_m, jnp.sum(u)
        return jax.lax.cond(jnp.isfinite(jnp.sum(g)), update, lambda o: (*o, jnp.zeros(())), (p, m))

    # 2. A norm of the update reads the old `p` (a weight-decay term) unordered with the write
    #    of the new one: XLA computes the new `p` elsewhere and copies it into `p`'s buffer.
    def with_update_norm(p, m, g):
        def update(p):
            u = g + 0.1 * p
            return p - u, jnp.sum(u * u)
        return jax.lax.cond(jnp.isfinite(jnp.sum(g)), update, lambda p: (p, jnp.zeros(())), p)

    def without(p, m, g):
        return jax.lax.cond(jnp.isfinite(jnp.sum(g)), lambda p: p - (g + 0.1 * p), lambda p: p, p)

    def copied(f):
        x = jnp.ones((64, 32))
        hlo = jax.jit(f, donate_argnums=(0, 1)).lower(x, x, x).compile().as_text()
        return [(name.split(".")[0], shape.split("{")[0]) for name, shape in profile.copied_donated_arrays(hlo)]

    assert copied(selected) == [("m", "f32[64,32]")]
    assert copied(conditional) == []
    assert copied(with_update_norm) == [("p", "f32[64,32]")]
    assert copied(without) == []


def _rows(table: str) -> list[list[str]]:
    """'  12.3 ms  45.6%  _Net/wide bwd' -> ['12.3', 'ms', '45.6%', '_Net/wide', 'bwd'] (the
    model-part table; the by-kind table or the single-op list below it ends it)."""
    rows = []
    for line in table.splitlines():
        if line.startswith(("top ", "op time per step by kind")):
            break
        if line.startswith("  ") and "more parts" not in line:
            rows.append(line.split())
    return rows


def _bench():
    spec = importlib.util.spec_from_file_location("align_step_bench", _BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_bench_set_overrides_config_fields_as_their_types():
    """bench/align_step.py --set KEY=VALUE, used to time variants of a slice config's step."""
    import ml_collections
    bench = _bench()
    config = ml_collections.ConfigDict(dict(llm=dict(attention_impl="xla", n_layers=32, scan_layers=True),
                                            align=dict(llm_remat_policy="dots_no_batch", kl_weight=0.0)))
    done = bench.apply_overrides(config, ["llm.attention_impl=cudnn", "llm.n_layers=4", "llm.scan_layers=false",
                                          "align.kl_weight=0.5"])
    assert (config.llm.attention_impl, config.llm.n_layers, config.llm.scan_layers, config.align.kl_weight) == \
        ("cudnn", 4, False, 0.5)
    assert done[1] == "llm.n_layers=4"
    for bad, says in [("llm.attn_impl=cudnn", "no field 'llm.attn_impl'"), ("llm.n_layers", "KEY=VALUE"),
                      ("llm.n_layers=four", "is a int"), ("llm.scan_layers=maybe", "write true or false")]:
        with pytest.raises(SystemExit, match=says):
            bench.apply_overrides(config, [bad])


def test_bench_profile_attributes_a_steps_op_time_to_its_modules(tmp_path, capsys):
    bench = _bench()
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

    run.hlo = compiled.as_text()
    bench.profile_steps(run, str(tmp_path), steps=2)
    out = capsys.readouterr().out
    rows = _rows(out)
    parts = [r[3] for r in rows]
    assert any(p.endswith("/wide") for p in parts), rows   # the Dense layers' own names
    assert any(p.endswith("/head") for p in parts), rows
    assert any(r[-1] == "bwd" for r in rows), rows         # the gradient's ops are marked
    assert sum(float(r[0]) for r in rows) > 0, rows
    # Below the table, the single ops: a Dense layer's matmul is among them, with its shape.
    assert "top 20 single ops per step" in out and "/wide/dot_general" in out, out
    # Above it, the traced window's own step time, to compare with the run's.
    assert re.search(r"steps 1-2: \d+ ms of wall time while traced, \d+ ms a step", out), out


def _traced_kinds(out_dir, f, *args):
    """(the table StepTrace returns, {kind: (runs, ms, MB) per step}) for 2 traced runs of f."""
    compiled = jax.jit(f).lower(*args).compile()
    hlo = compiled.as_text()
    tracer = profile.StepTrace(str(out_dir), 1, 2)
    for step in (1, 2):
        tracer.before(step)
        table = tracer.after(step, lambda: [hlo], compiled(*args))
    return table, {kind: (runs, ms, mb) for kind, runs, ms, mb in profile.op_time_by_kind(str(out_dir), [hlo], 2)}


def test_op_time_by_kind_counts_each_kinds_runs_and_bytes(tmp_path):
    """The by-kind table: a matmul's bytes are its operands' and result's, an elementwise op's
    its input's and output's, once per run; a scan's loop and its in-place updates have none."""
    table, rows = _traced_kinds(tmp_path / "a", lambda x, w, y: (x @ w, jnp.sin(y) * 2.0 + 1.0),
                                jnp.ones((256, 128)), jnp.ones((128, 64)), jnp.ones((512, 512)))
    assert "op time per step by kind of op" in table, table
    runs, ms, mb = rows[profile.MATMUL]
    assert runs == 1 and ms > 0 and mb == pytest.approx((256 * 128 + 128 * 64 + 256 * 64) * 4 / 1e6), rows
    # sin(y) * 2 + 1: one fused pass, read 1 MiB and write 1 MiB (an XLA loop fusion, or a
    # library fusion where XLA:CPU gives the elementwise ops to YNNPACK)
    fused = [rows[k] for k in (profile.LOOP_FUSION, profile.LIBRARY) if k in rows]
    assert [(runs, mb) for runs, _, mb in fused] == [(1, pytest.approx(2 * 512 * 512 * 4 / 1e6))], rows

    def scan(z):
        return jax.lax.scan(lambda c, row: (c * 0.5 + row, c), z[0], z)

    _, rows = _traced_kinds(tmp_path / "b", scan, jnp.ones((6, 4096)))
    assert rows[profile.CONTROL][2] is None, rows        # the while's time spans its body's ops
    assert rows[profile.DYNAMIC_SLICE][0] >= 6, rows      # the body's per-iteration slices, ...
    assert rows[profile.DYNAMIC_SLICE][2] is None, rows   # ... not counted as whole arrays


def test_trainer_traces_the_configured_steps_and_writes_the_table(tmp_path):
    config = small_config("--config.total_steps=12", "--config.profile.start_step=3", "--config.profile.steps=2")
    assert loop.train(config, str(tmp_path))["status"] == "done"
    traces = [f for _, _, fs in os.walk(tmp_path / "profile") for f in fs if f.endswith(".trace.json.gz")]
    assert len(traces) == 1, traces
    text = (tmp_path / "profile" / "op_time_by_part.txt").read_text()
    assert re.match(r"steps 3-4: \d+ ms of wall time while traced, \d+ ms a step\n", text), text
    rows = _rows(text)
    parts = {" ".join(r[3:]) for r in rows}
    assert {"MLP", "MLP bwd"} <= parts, rows   # the toy MLP's forward and its gradient
    assert re.search(r"\n +[\d.]+ +\d+ +[\d.]+ +[\d.]+  " + re.escape(profile.MATMUL), text), text


def test_device_traces_count_kernel_time_not_host_launches(tmp_path):
    """On a GPU the host thread logs each op's launch and the device process its kernels (a
    GEMM's kernel named by cuBLAS, the HLO op in args.hlo_op): only device time is summed."""
    import gzip
    import json
    hlo = ('ENTRY %main {\n'
           '  %custom-call.1 = f32[8] custom-call(), metadata={op_name="jit(step)/jvp(Llama)/mlp/dot_general"}\n'
           '  %fusion.2 = f32[8] fusion(), metadata={op_name="jit(step)/transpose(jvp(Llama))/mlp/mul"}\n'
           '}\n')
    events = [
        {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 1, "name": "custom-call.1", "dur": 900.0, "args": {"hlo_op": "custom-call.1"}},
        {"ph": "X", "pid": 2, "name": "sm90_xmma_gemm_bf16", "dur": 4000.0, "args": {"hlo_op": "custom-call.1"}},
        {"ph": "X", "pid": 2, "name": "fusion.2", "dur": 1000.0, "args": {"hlo_op": "fusion.2"}},
        {"ph": "X", "pid": 2, "name": "MemcpyD2D", "dur": 7000.0, "args": {}},
        {"ph": "X", "pid": 2, "name": "loop_add_fusion", "dur": 3000.0, "args": {}},  # in a CUDA graph
        # XLA:GPU's async dynamic-slice fusion (a scanned layer's weights): the HLO text does not
        # hold the op the event names, but the event carries its source op.
        {"ph": "X", "pid": 2, "name": "MemcpyD2D", "dur": 600.0,
         "args": {"hlo_op": "loop_dynamic_slice_fusion.24", "name": "jit(step)/jvp(Llama)/while/body"}},
        {"ph": "X", "pid": 2, "name": "MemcpyD2D", "dur": 400.0, "args": {"hlo_op": "fusion.2"}},
        # another executable's copy (another jitted function): not the step's
        {"ph": "X", "pid": 2, "name": "MemcpyD2D", "dur": 200.0,
         "args": {"hlo_op": "copy.9", "name": "jit(_multi_slice)/slice"}},
    ]
    with gzip.open(tmp_path / "x.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events}, f)
    rows = profile.op_time_by_part(str(tmp_path), [hlo], steps=2)
    # device time no step op claims: a kernel in a CUDA graph, and a memcpy naming no op at all;
    # a memcpy of a known op or source op goes to that part's copies
    assert dict(rows) == {"Llama/mlp": 2.0, "Llama/mlp bwd": 0.5, profile.UNMATCHED_DEVICE: 1.5,
                          profile.DEVICE_COPIES: 3.6, "Llama copies": 0.3, "Llama/mlp bwd copies": 0.2}, rows
    assert profile.NO_COMMAND_BUFFERS in profile.format_parts(rows)  # how to get the graphs' ops
    # The single-op list: device time per step, largest first, with shape and source op.
    ops = profile.top_ops(str(tmp_path), [hlo], steps=2).splitlines()
    assert ops[1].split()[:4] == ["2.00", "ms", "custom-call.1", "f32[8]"], ops
    assert ops[1].endswith("jit(step)/jvp(Llama)/mlp/dot_general") and ops[2].split()[2] == "fusion.2", ops
