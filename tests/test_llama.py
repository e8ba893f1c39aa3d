"""Llama model: equals transformers on the same weights; cache, scan, remat, embeddings entry,
logical axis names, Llama-2 sizes. Tiny random models (float32); tolerance 1e-4 absolute on
logits of magnitude ~5 (observed differences ~3e-6: float32 summation order)."""
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from audiochat_jax.convert.llama import convert_hf
from audiochat_jax.models.llama import (LLAMA2_SIZES, Llama, LlamaConfig, init_cache, init_params,
                                        stack_layer_params)
from audiochat_jax.parallel import sharding
from llama_fixtures import make_hf_llama, random_llama_params

TOL = 1e-4
TINY = LlamaConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=40,
                   max_seq_len=64, rope_theta=30000.0, dtype="float32", param_dtype="float32")


def _unbox(tree):
    return nn.meta.unbox(tree)


@pytest.fixture(scope="module")
def tiny_params():
    return random_llama_params(TINY, seed=0)


def _positions(mask):
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)


@pytest.mark.parametrize("n_kv_heads,tie", [(4, False), (2, False), (1, True)],
                         ids=["mha", "gqa", "mqa_tied"])
def test_logits_equal_transformers_with_left_padding(tmp_path, n_kv_heads, tie):
    hf, path = make_hf_llama(tmp_path, n_kv_heads=n_kv_heads, tie_embeddings=tie, vocab_size=67,
                             rope_theta=50000.0)
    cfg, params = convert_hf(path, param_dtype="float32", dtype="float32")
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, 67, (3, 9)).astype(np.int32)
    mask = np.ones((3, 9), bool)
    mask[1, :4] = False  # left padding
    mask[2, :1] = False
    pos = _positions(mask)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(pos, dtype=torch.long)).logits.numpy()
    ours = np.asarray(jax.jit(Llama(cfg).apply)({"params": params}, tokens, positions=pos, mask=mask))
    assert ours.dtype == np.float32 and ours.shape == (3, 9, 67)
    np.testing.assert_allclose(ours[mask], ref[mask], atol=TOL, rtol=0)


def test_forward_by_embeddings_equals_forward_by_tokens(tiny_params):
    model = Llama(TINY)
    tokens = np.random.RandomState(1).randint(0, 61, (2, 7)).astype(np.int32)
    mask, pos = np.ones((2, 7), bool), np.tile(np.arange(7, dtype=np.int32), (2, 1))
    apply = jax.jit(model.apply, static_argnames="method")
    emb = apply({"params": tiny_params}, tokens, method=Llama.embed)
    assert emb.shape == (2, 7, 32)
    by_tok = apply({"params": tiny_params}, tokens, positions=pos, mask=mask)
    by_emb = apply({"params": tiny_params}, embeddings=emb, positions=pos, mask=mask)
    np.testing.assert_array_equal(np.asarray(by_tok), np.asarray(by_emb))


def test_gradient_reaches_spliced_embeddings_only_through_inputs(tiny_params):
    """The alignment path: frozen params, gradient w.r.t. the spliced embeddings."""
    model = Llama(TINY)
    pos, mask = np.tile(np.arange(6, dtype=np.int32), (1, 1)), np.ones((1, 6), bool)
    audio = jax.random.normal(jax.random.key(2), (1, 3, 32))
    prefix = model.apply({"params": tiny_params}, np.array([[1, 5]]), method=Llama.embed)
    suffix = model.apply({"params": tiny_params}, np.array([[7]]), method=Llama.embed)

    def loss(a):
        x = jnp.concatenate([prefix, a, suffix], axis=1)
        return model.apply({"params": tiny_params}, embeddings=x, positions=pos, mask=mask)[0, -1, 3]

    g = jax.jit(jax.grad(loss))(audio)
    eps = 1e-3
    d = jax.random.normal(jax.random.key(3), audio.shape)
    loss = jax.jit(loss)
    fd = (loss(audio + eps * d) - loss(audio - eps * d)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(g, d)), float(fd), rtol=2e-2)


_SR_TOKENS = np.random.RandomState(4).randint(0, 61, (2, 6)).astype(np.int32)
_SR_MASK = np.array([[1] * 6, [0, 0, 1, 1, 1, 1]], bool)


def _logits_and_input_grad(cfg, params, emb):
    """(logits, d sum(logits) / d embeddings) in one jitted call."""
    pos = _positions(_SR_MASK)

    def f(e):
        out = Llama(cfg).apply({"params": params}, embeddings=e, positions=pos, mask=_SR_MASK)
        return out.sum(), out
    (_, logits), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(emb)
    return np.asarray(logits), np.asarray(grad)


@pytest.fixture(scope="module")
def plain_reference(tiny_params):
    emb = jax.jit(lambda t: Llama(TINY).apply({"params": tiny_params}, t, method=Llama.embed))(_SR_TOKENS)
    return emb, _logits_and_input_grad(TINY, tiny_params, emb)


@pytest.mark.parametrize("scan,remat", [(True, "none"), (False, "full"), (True, "dots_no_batch")])
def test_scan_layers_and_remat_give_same_logits_and_grads(tiny_params, plain_reference, scan, remat):
    cfg = TINY.replace(scan_layers=scan, remat_policy=remat)
    params = stack_layer_params(tiny_params, TINY.n_layers) if scan else tiny_params
    emb, (ref_logits, ref_grad) = plain_reference
    logits, grad = _logits_and_input_grad(cfg, params, emb)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(grad, ref_grad, atol=1e-4, rtol=1e-5)


def test_bf16_backward_keeps_weight_matmuls_in_bf16_and_matches_float32(tiny_params, monkeypatch):
    """The 7B align step's setting on an accelerator (bf16, scanned, remat dots_no_batch,
    frozen weights): every matmul with a layer weight, forward and backward, takes bf16
    operands and gives bf16. A float32 result cast to bf16 made the backward's cotangents
    float32, so its matmuls ran in float32 on converted weights (on an H100: 440 vs 312 ms for
    the 7B step at batch 16). XLA:CPU gets the float32-result form (tests/test_compute_dtype.py)."""
    import re
    from audiochat_jax.models import precision
    monkeypatch.setattr(precision, "float32_result_dots", lambda: False)  # the accelerator form
    cfg = TINY.replace(dtype="bfloat16", scan_layers=True, remat_policy="dots_no_batch")
    params = stack_layer_params(tiny_params, TINY.n_layers)
    mask, pos = np.ones((2, 6), bool), np.tile(np.arange(6, dtype=np.int32), (2, 1))
    emb = jax.random.normal(jax.random.key(0), (2, 6, TINY.dim))

    def loss(e, c):
        h = Llama(c).apply({"params": params}, embeddings=e, positions=pos, mask=mask, method=Llama.hidden_states)
        return h.astype(jnp.float32).sum()

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    text = grad.lower(emb, cfg).as_text()
    d, h, kv, hd, f = TINY.dim, TINY.n_heads, TINY.n_kv_heads, TINY.head_dim, TINY.ffn_dim
    weights = (f"{d}x{h}x{hd}", f"{d}x{kv}x{hd}", f"{h}x{hd}x{d}", f"{d}x{f}", f"{f}x{d}")  # wq; wk, wv; wo; mlp
    dots = re.findall(r"stablehlo.dot_general.*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", text)
    with_weights = [d for d in dots if any(d[1].startswith(f"tensor<{w}x") for w in weights)]
    assert len(with_weights) >= 14, dots  # 7 in the forward, 7 input gradients (remat may add)
    assert all(t.endswith("xbf16>") for d in with_weights for t in d), with_weights
    # and the gradient is float32's to within bf16 rounding (measured 1.6e-2 of the largest)
    g16 = np.asarray(grad(emb, cfg), np.float32)
    g32 = np.asarray(grad(emb, cfg.replace(dtype="float32")))
    assert np.abs(g16 - g32).max() < 5e-2 * np.abs(g32).max()


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed_segments"])
def test_fused_attention_settings_pad_odd_lengths_without_changing_outputs(tiny_params, packed):
    """attention_impl "cudnn"/"auto": an odd length gets one masked slot (cuDNN's fused attention
    trains only even lengths). On CPU "auto" runs XLA's attention, so the padded path is
    compared with "xla" here: same logits and input gradients on every real token."""
    tokens = np.random.RandomState(6).randint(0, 61, (2, 7)).astype(np.int32)
    mask = np.array([[1] * 7, [0, 0, 1, 1, 1, 1, 1]], bool)
    seg = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]], np.int32) if packed else None
    pos = _positions(mask) if not packed else np.array([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 0, 1]], np.int32)
    emb = jax.jit(lambda t: Llama(TINY).apply({"params": tiny_params}, t, method=Llama.embed))(tokens)

    def run(impl):
        def f(e):
            out = Llama(TINY.replace(attention_impl=impl)).apply(
                {"params": tiny_params}, embeddings=e, positions=pos, mask=mask, segment_ids=seg)
            return (out * mask[..., None]).sum(), out
        (_, logits), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(emb)
        return np.asarray(logits), np.asarray(grad), str(jax.make_jaxpr(f)(emb))

    ref_logits, ref_grad, ref_jaxpr = run("xla")
    logits, grad, jaxpr = run("auto")
    assert "f32[2,8,32]" in jaxpr and "f32[2,8,32]" not in ref_jaxpr  # the padded slot exists
    assert logits.shape == ref_logits.shape == (2, 7, TINY.vocab_size)
    np.testing.assert_allclose(logits[mask], ref_logits[mask], atol=1e-5, rtol=0)
    # Input gradients reach |100| here, and the two paths reduce over 7 vs 8 slots, so float32
    # rounds them differently: on an AMD EPYC (AVX-512) each path was ~7e-5 from a float64 run
    # and 6e-5 from the other, while in float64 the two paths agreed exactly. Same gradient
    # tolerance as the scan/remat test above, which also reorders float32 sums.
    np.testing.assert_allclose(grad, ref_grad, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
def test_kv_cache_decode_equals_full_forward(tiny_params, scan):
    cfg = TINY.replace(scan_layers=scan)
    params = stack_layer_params(tiny_params, TINY.n_layers) if scan else tiny_params
    model = Llama(cfg)
    tokens = np.random.RandomState(5).randint(0, 61, (2, 10)).astype(np.int32)
    mask = np.ones((2, 10), bool)
    mask[1, :3] = False  # row 1 left-padded
    pos = _positions(mask)
    full = np.asarray(jax.jit(model.apply)({"params": params}, tokens, positions=pos, mask=mask))

    apply = jax.jit(lambda t, p, m, c: model.apply({"params": params}, t, positions=p, mask=m,
                                                   cache=c, decode=True))
    cache = init_cache(cfg, 2, 12)
    logits, cache = apply(tokens[:, :5], pos[:, :5], mask[:, :5], cache)  # prefill 5
    got = [np.asarray(logits)]
    for t in range(5, 10):  # then one token at a time
        logits, cache = apply(tokens[:, t:t + 1], pos[:, t:t + 1], mask[:, t:t + 1], cache)
        got.append(np.asarray(logits))
    assert int(cache["index"]) == 10
    got = np.concatenate(got, axis=1)
    np.testing.assert_allclose(got[mask], full[mask], atol=TOL, rtol=0)


def test_every_kernel_has_logical_axis_names_and_shards_on_8_devices(tiny_params):
    for scan in (False, True):
        cfg = TINY.replace(scan_layers=scan, vocab_size=64)
        boxed = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
        leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
        assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
        for x in leaves:
            assert len(x.names) == x.value.ndim
            assert set(x.names) <= {n for n, _ in sharding.LOGICAL_AXIS_RULES}
    # A real sharded forward on a (data=2, fsdp=2, tensor=2) mesh equals the unsharded one.
    cfg = TINY.replace(vocab_size=64, n_kv_heads=2)
    mesh = sharding.make_mesh((2, 2, 2))
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0)))
    shardings = _unbox(sharding.logical_to_sharding(abstract, mesh))
    host = random_llama_params(cfg, seed=1)
    tokens = np.arange(8 * 5, dtype=np.int32).reshape(8, 5) % 64
    pos, mask = np.tile(np.arange(5, dtype=np.int32), (8, 1)), np.ones((8, 5), bool)
    with jax.set_mesh(mesh), sharding.axis_rules():
        params = jax.device_put(host, shardings)
        assert params["layers_0"]["mlp"]["gate"].sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
        sharded = jax.jit(lambda p, t: Llama(cfg).apply({"params": p}, t, positions=pos, mask=mask))(
            params, jax.device_put(tokens, sharding.batch_sharding(mesh, 2)))
    plain = jax.jit(Llama(cfg).apply)({"params": host}, tokens, positions=pos, mask=mask)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(plain), atol=1e-5, rtol=0)


def _n_params(cfg):
    abstract = jax.eval_shape(lambda: init_params(cfg, jax.random.key(0), length=2))
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(_unbox(abstract)))


@pytest.mark.parametrize("size,published", [("7b", 6_738_415_616), ("13b", 13_015_864_320),
                                            ("70b", 68_976_648_192)])
def test_llama2_sizes_have_published_parameter_counts(size, published):
    # published = transformers' num_parameters() of meta-llama/Llama-2-{size}-chat-hf
    cfg = LlamaConfig(**LLAMA2_SIZES[size], scan_layers=True)
    assert _n_params(cfg) == published


@pytest.mark.parametrize("size", ["7b", "13b", "70b"])
def test_configs_load_with_llm_section(size):
    path = os.path.join(os.path.dirname(__file__), "..", "configs", f"llama2_{size}_chat.py")
    spec = importlib.util.spec_from_file_location(f"cfg_{size}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    llm = LlamaConfig.from_dict(module.get_config(None).llm.to_dict())
    assert {k: getattr(llm, k) for k in LLAMA2_SIZES[size]} == LLAMA2_SIZES[size]
    assert module.__doc__.lstrip().splitlines()[2].strip().startswith("python -m audiochat_jax")


def test_config_round_trip_and_clear_errors():
    assert LlamaConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match=r"unknown field\(s\) \[.hidden_size.\]"):
        LlamaConfig.from_dict({**TINY.to_dict(), "hidden_size": 3})
    with pytest.raises(ValueError, match="n_kv_heads=3: must divide n_heads=4"):
        TINY.replace(n_kv_heads=3)
    with pytest.raises(ValueError, match="remat_policy"):
        TINY.replace(remat_policy="sometimes")
    with pytest.raises(ValueError, match="exactly one of tokens"):
        Llama(TINY).init(jax.random.key(0), positions=np.zeros((1, 2), np.int32), mask=np.ones((1, 2), bool))
