"""MFU's FLOP count for scanned models: XLA counts a scanned layer stack's body once, and
``llama.scanned_flops_uncounted`` / ``conformer.scanned_flops_uncounted`` supply the rest —
checked against XLA's own count of the same step with the layers unrolled."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from audiochat_jax.models import conformer
from audiochat_jax.models.llama import Llama, LlamaConfig, init_params, scanned_flops_uncounted

B, L = 2, 64


def _xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def _step_flops(scan: bool, mode: str, remat: str = "none") -> tuple[float, LlamaConfig]:
    cfg = LlamaConfig(vocab_size=512, dim=256, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=512,
                      dtype="float32", scan_layers=scan, remat_policy=remat)
    model = Llama(cfg)
    params = jax.eval_shape(lambda: jax.tree.map(
        lambda x: x.unbox() if hasattr(x, "unbox") else x, init_params(cfg, jax.random.key(0)),
        is_leaf=lambda x: hasattr(x, "unbox")))
    pos = jnp.broadcast_to(jnp.arange(L), (B, L))
    mask = jnp.ones((B, L), bool)
    emb = jax.ShapeDtypeStruct((B, L, cfg.dim), jnp.float32)

    def loss(p, x):
        return jnp.sum(model.apply({"params": p}, embeddings=x, positions=pos, mask=mask) ** 2)

    if mode == "train":      # forward + backward with weight gradients (the lm task)
        fn = jax.grad(loss)
    elif mode == "frozen":   # gradients for the input embeddings only (alignment's frozen LLM)
        fn = jax.grad(loss, argnums=1)
    else:                    # forward only (the text-prompted teacher)
        fn = loss
    return _xla_flops(fn, params, emb), cfg


@pytest.mark.parametrize("mode,passes,remat", [("forward", 1, "none"), ("frozen", 2, "none"),
                                               ("train", 3, "none"), ("frozen", 3, "full")])
def test_scanned_count_plus_uncounted_equals_unrolled_count(mode, passes, remat):
    unrolled, _ = _step_flops(False, mode, remat)
    scanned, cfg = _step_flops(True, mode, remat)
    missed = scanned_flops_uncounted(cfg, L, B, passes)
    assert scanned < 0.6 * unrolled  # the undercount is real
    # Matmuls only in the correction: norms/softmax/rotary are ~1-2% of a d=256 layer.
    assert abs(scanned + missed - unrolled) / unrolled < 0.03, (scanned, missed, unrolled)
    assert scanned_flops_uncounted(cfg.replace(scan_layers=False), L, B, passes) == 0.0


def _conformer_flops(scan: bool, train: bool, remat: str) -> tuple[float, "conformer.ConformerConfig", int]:
    cfg = conformer.ConformerConfig(n_mels=32, d_model=96, n_layers=3, n_heads=4, ffn_dim=384, conv_kernel_size=15,
                                    subsampling="dw_striding", subsampling_channels=16, dropout=0.0,
                                    attention_dropout=0.0, conv_norm="layer_norm", remat_policy=remat,
                                    scan_layers=scan)
    model = conformer.ConformerEncoder(cfg)
    params = jax.eval_shape(lambda: conformer.init_variables(cfg, jax.random.key(0), ctc=False)["params"])
    feats = jax.ShapeDtypeStruct((B, 120, cfg.n_mels), jnp.float32)
    lengths = jnp.full((B,), 120, jnp.int32)

    def loss(p, x):
        return jnp.sum(model.apply({"params": p}, x, lengths)[0] ** 2)

    frames = int(conformer.subsampled_lengths(jnp.array([120]), cfg)[0])
    return _xla_flops(jax.grad(loss) if train else loss, params, feats), cfg, frames


@pytest.mark.parametrize("train,remat", [(False, "none"), (True, "full")])
def test_scanned_conformer_count_plus_uncounted_equals_unrolled_count(train, remat):
    unrolled, _, _ = _conformer_flops(False, train, remat)
    scanned, cfg, frames = _conformer_flops(True, train, remat)
    missed = conformer.scanned_flops_uncounted(cfg, frames, B, backward=train)
    assert scanned < 0.6 * unrolled  # the undercount is real
    # Matmuls and depthwise taps only: norms, softmax and activations are ~2% at d=96
    # (~3.5% at d=64: the bound is for widths like the mini encoder's 144 and up).
    assert abs(scanned + missed - unrolled) / unrolled < 0.03, (scanned, missed, unrolled)
    assert conformer.scanned_flops_uncounted(cfg.replace(scan_layers=False), frames, B, train) == 0.0


def test_matmul_flops_counts_each_dot_and_convolution_once():
    """flop_count.matmul_flops (the MFU's FLOPs): 2 x outputs x contracted size per dot, 2 x outputs
    x kernel inputs x window per convolution, a while body once; the same from the text before
    and after XLA's optimisations; XLA's own count agrees on a lone matmul."""
    from audiochat_jax.train import flop_count
    a, b, c, t = 6, 16, 32, 3

    def f(x, w, k):
        y = x @ w                                                   # 2abc
        z = jax.lax.conv_general_dilated(x[None, :, :, None], k, (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))  # out [1, a-2, b-2, 4]
        carry, _ = jax.lax.scan(lambda h, _: ((h @ w) @ w.T, None), x, None, length=t)  # 2 x 2abc, once
        return y.sum() + z.sum() + carry.sum() + jnp.tanh(x).sum()   # elementwise work is not counted

    args = (jnp.ones((a, b)), jnp.ones((b, c)), jnp.ones((3, 3, 1, 4)))
    want = 2 * a * b * c + 2 * (a - 2) * (b - 2) * 4 * 9 + 2 * 2 * a * b * c
    lowered = jax.jit(f).lower(*args)
    assert flop_count.matmul_flops(lowered.as_text(dialect="hlo")) == want
    assert flop_count.matmul_flops(lowered.compile().as_text()) == want
    dot = jax.jit(lambda x, w: x @ w).lower(*args[:2])
    assert flop_count.matmul_flops(dot.as_text(dialect="hlo")) == flop_count.compiled_flops(dot.compile()) == 2 * a * b * c


def test_matmul_flops_of_a_sharded_step_are_the_whole_steps(n_devices):
    """The text before partitioning has global shapes: a batch-sharded matmul on 8 devices
    counts the FLOPs of the whole product (the trainer's MFU divides by all devices' peak)."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    from audiochat_jax.parallel import sharding
    from audiochat_jax.train import flop_count
    mesh = sharding.make_mesh((2, 2, 2))
    x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
    f = jax.jit(lambda x, w: x @ w, in_shardings=(NamedSharding(mesh, P(("data", "fsdp"), None)),
                                                  NamedSharding(mesh, P(None, "tensor"))))
    assert n_devices == 8
    assert flop_count.matmul_flops(f.lower(x, w).as_text(dialect="hlo")) == 2 * 64 * 32 * 16
