"""Conformer model behaviour: lengths, padding independence, batch-norm masking, remat,
scanned blocks, sharding names, CTC loss vs torch, greedy decoding, a CTC overfit, the CTC vocabulary,
the bfloat16 encoder's fast CPU form."""
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from audiochat_jax.models import conformer, ctc
from audiochat_jax.models.conformer import ConformerConfig, ConformerCTC, ConformerEncoder
from audiochat_jax.parallel import sharding
from audiochat_jax.text.char_vocab import CharVocab, error_rates
import conformer_fixtures as fx


def jitted_apply(model):
    """Compiled once per shape: eager flax dispatch is far slower on busy cores."""
    return jax.jit(model.apply, static_argnames=("train", "mutable"))


def random_variables(cfg: ConformerConfig, *, ctc_head: bool = True, seed: int = 0) -> dict:
    """Unit-scale random variables from the init's shapes (no init compile: tests stay fast).

    Kernels ~ N(0, 1/fan_in), biases/pos-biases ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.1^2),
    batch-norm means ~ N(0, 0.1^2) and variances ~ U(0.5, 1.5).
    """
    model = ConformerCTC(cfg) if ctc_head else ConformerEncoder(cfg)
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, cfg.n_mels)),
                                     jnp.array([16])))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        x = rng.standard_normal(leaf.shape)
        if name == "kernel":  # fan-in: all but the output axis, except [d, heads, head_dim]
            split = path[-2].key in ("linear_q", "linear_k", "linear_v", "linear_pos")
            x = x / np.sqrt(leaf.shape[0] if split else np.prod(leaf.shape[:-1]))
        elif name == "scale":
            x = 1 + 0.1 * x
        else:
            x = 0.1 * x
        return jnp.asarray(x, jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def tiny(**kw) -> ConformerConfig:
    base = dict(n_mels=16, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, conv_kernel_size=5,
                subsampling="dw_striding", subsampling_factor=4, subsampling_channels=8, vocab_size=12)
    base.update(kw)
    return ConformerConfig(**base)


def test_config_round_trips_and_names_bad_fields():
    cfg = tiny(remat_policy="full", dtype="bfloat16")
    assert ConformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown field.*d_modle"):
        ConformerConfig.from_dict({"d_modle": 3})
    with pytest.raises(ValueError, match="subsampling_factor"):
        tiny(subsampling_factor=6)
    with pytest.raises(ValueError, match="n_heads"):
        tiny(n_heads=5)
    with pytest.raises(ValueError, match="conv_norm"):
        tiny(conv_norm="group_norm")
    with pytest.raises(ValueError, match="n_mels=16"):
        jax.eval_shape(ConformerEncoder(tiny()).init, jax.random.key(0), jnp.zeros((1, 20, 80)), jnp.array([20]))


@pytest.mark.parametrize("factor", [4, 8, 16])
def test_output_lengths_follow_parakeet_formula(factor):
    import torch
    model = fx.tiny_parakeet(factor=factor, n_layers=1)
    lengths = np.arange(0, 400)
    ref = model._get_subsampling_output_length(torch.from_numpy(lengths)).numpy()
    np.testing.assert_array_equal(conformer.subsampled_lengths(lengths, tiny(subsampling_factor=factor)), ref)


@pytest.mark.parametrize("subsampling,norm", [("dw_striding", "batch_norm"), ("striding", "layer_norm")])
def test_valid_frames_do_not_depend_on_padding(subsampling, norm):
    cfg = tiny(subsampling=subsampling, conv_norm=norm)
    apply = jitted_apply(ConformerEncoder(cfg))
    lengths = np.array([57, 120, 31])
    feats = fx.random_features(lengths, 16, seed=5)
    variables = random_variables(cfg, ctc_head=False, seed=1)
    out, out_len = apply(variables, jnp.asarray(feats), jnp.asarray(lengths))
    assert out.shape == (3, conformer.subsampled_lengths(120, cfg), 32)
    np.testing.assert_array_equal(out_len, conformer.subsampled_lengths(lengths, cfg))
    # The same utterances in another order, with 77 more frames of garbage padding.
    order = np.array([2, 0, 1])
    garbage = np.random.default_rng(9).standard_normal((3, 197, 16)).astype(np.float32) * 5
    for i, j in enumerate(order):
        garbage[i, :lengths[j]] = feats[j, :lengths[j]]
    out2, out_len2 = apply(variables, jnp.asarray(garbage), jnp.asarray(lengths[order]))
    for i, j in enumerate(order):
        m = int(out_len[j])
        assert int(out_len2[i]) == m
        np.testing.assert_allclose(out2[i, :m], out[j, :m], atol=1e-5, rtol=0)
        assert not np.any(np.asarray(out2[i, m:])), "padded output frames must be zero"


def test_batch_norm_statistics_use_valid_frames_only():
    cfg = tiny(conv_norm="batch_norm", dropout=0.0, attention_dropout=0.0, n_layers=1)
    apply = jitted_apply(ConformerEncoder(cfg))
    feats = fx.random_features([64, 40], 16, seed=2)
    variables = random_variables(cfg, ctc_head=False)
    padded = np.concatenate([feats, np.full((2, 48, 16), 7.0, np.float32)], axis=1)  # garbage padding
    _, s1 = apply(variables, jnp.asarray(feats), jnp.array([64, 40]), train=True, mutable=("batch_stats",))
    _, s2 = apply(variables, jnp.asarray(padded), jnp.array([64, 40]), train=True, mutable=("batch_stats",))
    changed = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), s1["batch_stats"],
                                     variables["batch_stats"])
    assert max(jax.tree_util.tree_leaves(changed)) > 1e-3, "training must update the running statistics"
    for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s2)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_remat_gives_same_loss_and_gradients():
    # Recomputation fuses differently, so equality is to float32 rounding (rtol 1e-5), not bits.
    feats = jnp.asarray(fx.random_features([48, 30], 16, seed=4))
    lengths, labels, label_len = jnp.array([48, 30]), jnp.array([[1, 2, 3], [4, 5, 0]]), jnp.array([3, 2])
    results = []
    for policy in ("none", "full"):
        cfg = tiny(remat_policy=policy, conv_norm="layer_norm", n_layers=1)
        variables = random_variables(cfg)

        def loss(params):
            logits, out_len = ConformerCTC(cfg).apply({"params": params}, feats, lengths)
            return ctc.ctc_loss(logits, out_len, labels, label_len, blank_id=11).mean()

        results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
    (v0, g0), (v1, g1) = results
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    # Relative to the gradient's overall scale: elementwise rtol is ill-posed near zero, and
    # some leaves (the key bias: softmax is shift-invariant) have an exactly-zero gradient.
    scale = max(float(np.abs(g).max()) for g in jax.tree_util.tree_leaves(g0))
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
        assert np.abs(a - b).max() <= 1e-5 * scale


def test_every_kernel_is_named_and_a_sharded_forward_matches(n_devices):
    cfg = tiny(n_layers=1)
    model = ConformerCTC(cfg)
    feats = jnp.asarray(fx.random_features([40, 33, 21, 40], 16, seed=6))
    lengths = jnp.array([40, 33, 21, 40])
    boxed = jax.eval_shape(model.init, jax.random.key(0), feats, lengths)
    leaves = jax.tree_util.tree_leaves(boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves), "every param needs logical names"
    variables = random_variables(cfg)
    ref, _ = jitted_apply(model)(variables, feats, lengths)

    mesh = sharding.make_mesh((2, 2, 2))
    shardings = sharding.logical_to_sharding(boxed, mesh)  # raises on names outside the vocabulary
    with jax.set_mesh(mesh), sharding.axis_rules():
        fwd = jax.jit(model.apply, in_shardings=(shardings, sharding.batch_sharding(mesh, 3),
                                                 sharding.batch_sharding(mesh, 1)))
        out, _ = fwd(jax.device_put(variables, shardings), feats, lengths)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_scanned_blocks_keep_the_unrolled_layout_outputs_statistics_and_gradients(n_devices):
    # scan_layers changes how XLA compiles the blocks, not the model: the same stored tree
    # (names, shapes, logical axes) gives the same logits, batch-norm updates and gradients,
    # to float32 rounding (the scan body fuses differently), also sharded on 8 devices.
    unrolled = tiny(n_layers=2, conv_norm="batch_norm", dropout=0.0, attention_dropout=0.0, remat_policy="full")
    scanned = unrolled.replace(scan_layers=True)
    feats = jnp.asarray(fx.random_features([48, 30, 41, 48], 16, seed=9))
    lengths = jnp.array([48, 30, 41, 48])
    boxes = [jax.eval_shape(ConformerCTC(c).init, jax.random.key(0), feats, lengths) for c in (unrolled, scanned)]
    names = [jax.tree.map(lambda b: (b.value.shape, b.names) if isinstance(b, nn.Partitioned) else b.shape, t,
                          is_leaf=lambda x: isinstance(x, nn.Partitioned)) for t in boxes]
    assert names[0] == names[1] and "layers_1" in boxes[1]["params"]["encoder"]
    variables = random_variables(unrolled)
    labels, label_len = jnp.array([[1, 2, 3]] * 4), jnp.array([3, 2, 3, 1])

    def run(cfg):
        model = ConformerCTC(cfg)
        (logits, _), stats = jitted_apply(model)(variables, feats, lengths, train=True, mutable=("batch_stats",))

        def loss(params):
            out, out_len = model.apply({**variables, "params": params}, feats, lengths)
            return ctc.ctc_loss(out, out_len, labels, label_len, blank_id=11).mean()

        return logits, stats, jax.jit(jax.grad(loss))(variables["params"])

    (l0, s0, g0), (l1, s1, g1) = run(unrolled), run(scanned)
    np.testing.assert_allclose(l1, l0, atol=1e-5)
    assert jax.tree.structure(s1) == jax.tree.structure(s0)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s0)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g0))
    assert jax.tree.structure(g1) == jax.tree.structure(g0)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        assert np.abs(a - b).max() <= 1e-5 * scale

    mesh = sharding.make_mesh((2, 2, 2))
    shardings = sharding.logical_to_sharding(boxes[1], mesh)
    with jax.set_mesh(mesh), sharding.axis_rules():
        fwd = jax.jit(lambda v, f, n: ConformerCTC(scanned).apply(v, f, n, train=True, mutable=("batch_stats",)),
                      in_shardings=(shardings, sharding.batch_sharding(mesh, 3), sharding.batch_sharding(mesh, 1)))
        (out, _), stats = fwd(jax.device_put(variables, shardings), feats, lengths)
    np.testing.assert_allclose(out, l0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(s0)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_ctc_loss_matches_torch_per_example():
    import torch
    rng = np.random.default_rng(0)
    b, t, v = 3, 30, 7
    logits = rng.standard_normal((b, t, v)).astype(np.float32)
    lengths = np.array([30, 22, 9])
    labels = rng.integers(0, v - 1, size=(b, 6))
    label_len = np.array([6, 4, 2])
    ours = ctc.ctc_loss(jnp.asarray(logits), jnp.asarray(lengths), jnp.asarray(labels), jnp.asarray(label_len),
                        blank_id=v - 1)
    log_probs = torch.from_numpy(logits).log_softmax(-1).transpose(0, 1)
    ref = torch.nn.functional.ctc_loss(log_probs, torch.from_numpy(labels), torch.from_numpy(lengths),
                                       torch.from_numpy(label_len), blank=v - 1, reduction="none")
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5)


def test_ctc_feasible_is_exactly_where_torch_ctc_is_finite():
    """min_frames = labels + adjacent repeats: the rows torch's CTC (no zero_infinity) gives
    +inf are exactly the rows ``feasible`` rejects; optax gives those a huge finite loss."""
    import torch
    rng = np.random.default_rng(2)
    b, t, v, n = 64, 12, 3, 10  # 2 classes + blank: many repeats
    logits = rng.standard_normal((b, t, v)).astype(np.float32)
    lengths = rng.integers(1, t + 1, size=b)
    labels = rng.integers(0, v - 1, size=(b, n))
    label_len = rng.integers(1, n + 1, size=b)
    ok = np.asarray(ctc.feasible(jnp.asarray(lengths), jnp.asarray(labels), jnp.asarray(label_len)))
    ref = torch.nn.functional.ctc_loss(
        torch.from_numpy(logits).log_softmax(-1).transpose(0, 1), torch.from_numpy(labels),
        torch.from_numpy(lengths), torch.from_numpy(label_len), blank=v - 1, reduction="none").numpy()
    assert 5 < ok.sum() < b - 5  # both kinds present
    np.testing.assert_array_equal(ok, np.isfinite(ref))
    ours = np.asarray(ctc.ctc_loss(jnp.asarray(logits), jnp.asarray(lengths), jnp.asarray(labels),
                                   jnp.asarray(label_len), blank_id=v - 1))
    assert np.all(ours[~ok] > 1e3)


def test_greedy_decode_merges_repeats_then_drops_blanks():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 4, size=(5, 25))
    lengths = np.array([25, 10, 1, 0, 17])
    logits = jax.nn.one_hot(ids, 4) * 5.0
    got = ctc.greedy_decode(logits, lengths, blank_id=3)
    for row, n, hyp in zip(ids, lengths, got):
        want = [k for k, _ in itertools.groupby(row[:n].tolist()) if k != 3]
        assert hyp == want
    assert ctc.greedy_decode(jax.nn.one_hot(jnp.array([[0, 0, 3, 0, 1, 1]]), 4), [6], 3) == [[0, 0, 1]]


def test_ctc_training_learns_to_transcribe_two_utterances():
    vocab = CharVocab(list("abc "))
    texts = ["abc", "cab a"]
    rng = np.random.default_rng(0)
    # Each character is a distinct 10-frame mel pattern: a learnable toy "speech".
    patterns = {c: rng.standard_normal(16).astype(np.float32) * 2 for c in vocab.tokens}
    utts = [np.concatenate([np.tile(patterns[c], (10, 1)) for c in t]) for t in texts]
    lengths = np.array([len(u) for u in utts])
    feats = np.zeros((2, lengths.max(), 16), np.float32)
    for i, u in enumerate(utts):
        feats[i, :len(u)] = u + 0.1 * rng.standard_normal(u.shape)
    labels = np.zeros((2, 5), np.int32)
    for i, t in enumerate(texts):
        labels[i, :len(t)] = vocab.encode(t)
    label_len = np.array([len(t) for t in texts])

    cfg = tiny(n_layers=1, vocab_size=vocab.size, conv_norm="layer_norm", dropout=0.0, attention_dropout=0.0)
    model = ConformerCTC(cfg)
    params = random_variables(cfg)["params"]
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        def loss_fn(p):
            logits, out_len = model.apply({"params": p}, feats, lengths)
            return ctc.ctc_loss(logits, out_len, labels, label_len, vocab.blank_id).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(params, updates), state, loss

    first = None
    for _ in range(40):
        params, state, loss = step(params, state)
        first = float(loss) if first is None else first
    logits, out_len = jax.jit(model.apply)({"params": params}, feats, lengths)
    hyps = [vocab.decode(ids) for ids in ctc.greedy_decode(logits, out_len, vocab.blank_id)]
    assert float(loss) < 0.1 * first, (first, float(loss))
    assert hyps == texts


def test_char_vocab_round_trip_errors_and_pieces():
    vocab = CharVocab.english()
    assert vocab.blank_id == 28 and vocab.size == 29
    assert vocab.decode(vocab.encode("it's a cat")) == "it's a cat"
    with pytest.raises(ValueError, match="'Q'.*from_texts"):
        vocab.encode("Quit")
    assert CharVocab.from_dict(vocab.to_dict()).tokens == vocab.tokens
    assert CharVocab.from_texts(["ba", "ab c"]).tokens == [" ", "a", "b", "c"]
    pieces = CharVocab(["▁the", "▁ca", "t"], kind="pieces")
    assert pieces.decode([0, 1, 2, 3]) == "the cat"  # 3 is the blank: skipped
    with pytest.raises(ValueError, match="sentencepiece"):
        pieces.encode("the")


def test_error_rates_count_word_and_character_edits():
    rates = error_rates(["the cat sat", "a dog"], ["the bat sat", "a dog"])
    assert rates["wer"] == pytest.approx(1 / 5)         # one substituted word of five
    assert rates["cer"] == pytest.approx(1 / 16)        # one substituted character of 16
    with pytest.raises(ValueError, match="2 references vs 1"):
        error_rates(["a", "b"], ["a"])


def test_depthwise_subsampling_conv_equals_grouped_conv_and_its_sharded_gradient_is_right():
    """The dw_striding stem's depthwise conv: same outputs as nn.Conv(feature_group_count=c),
    and on a (2,2,2) mesh the same kernel gradient as on one device (XLA's SPMD partitioner
    got the grouped strided conv's kernel gradient wrong; see DepthwiseConv)."""
    from audiochat_jax.models.conformer import ConvSubsampling, DepthwiseConv

    dw = DepthwiseConv(8, (3, 3), (2, 2), ((1, 1), (1, 1)), ("conv_k", None, "conv_in", "conv_out"))
    x = jnp.asarray(np.random.RandomState(1).randn(3, 17, 12, 8), jnp.float32)
    params = jax.tree.map(lambda a: a + 0.1, nn.unbox(dw.init(jax.random.key(1), x)))
    ref = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=8).apply(params, x)
    np.testing.assert_allclose(dw.apply(params, x), ref, atol=1e-5)
    # Input and kernel gradients of the strided 2-D conv equal the grouped conv's on one device.
    grouped = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=8)
    sq = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))  # noqa: E731
    for a, b in zip(jax.tree.leaves(jax.grad(sq(dw), (0, 1))(params, x)),
                    jax.tree.leaves(jax.grad(sq(grouped), (0, 1))(params, x))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    # The convolution module's 1-D depthwise conv (31 taps, 'same' padding): outputs and the
    # gradients of input and kernel equal the grouped conv's.
    dw1 = DepthwiseConv(6, (31,), (1,), ((15, 15),), ("conv_k", "conv_in", "embed"))
    x1 = jnp.asarray(np.random.RandomState(2).randn(2, 40, 6), jnp.float32)
    p1 = jax.tree.map(lambda a: a + 0.1, nn.unbox(dw1.init(jax.random.key(2), x1)))
    conv1 = nn.Conv(6, (31,), padding=((15, 15),), feature_group_count=6)
    np.testing.assert_allclose(dw1.apply(p1, x1), conv1.apply(p1, x1), atol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.grad(sq(dw1), (0, 1))(p1, x1)), jax.tree.leaves(jax.grad(sq(conv1), (0, 1))(p1, x1))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    cfg = ConformerConfig(n_mels=16, d_model=32, n_layers=1, n_heads=2, ffn_dim=64, subsampling="dw_striding",
                          subsampling_factor=4, subsampling_channels=8, vocab_size=5)
    stem = ConvSubsampling(cfg)
    feats = jnp.asarray(np.random.RandomState(0).randn(8, 40, 16), jnp.float32)
    lengths = jnp.array([40, 33, 20, 40, 11, 39, 25, 30])
    p = nn.unbox(stem.init(jax.random.key(0), feats, lengths))["params"]

    def loss(p, f, n):
        return jnp.sum(jnp.sin(stem.apply({"params": p}, f, n)[0]))

    g1 = jax.jit(jax.grad(loss))(p, feats, lengths)
    mesh = sharding.make_mesh((2, 2, 2))
    with jax.set_mesh(mesh), sharding.axis_rules():
        g8 = jax.jit(jax.grad(loss))(p, jax.device_put(feats, sharding.batch_sharding(mesh, 3)),
                                     jax.device_put(lengths, sharding.batch_sharding(mesh, 1)))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(jax.device_get(g8))):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-4 * float(np.abs(a).max()))


def test_bf16_encoder_on_cpu_takes_the_float32_result_dots_and_tracks_float32():
    """XLA:CPU runs a bfloat16-result dot as a slow generic loop; every bf16 product of the
    blocks (linears, projections, attention) must give float32 (models/precision.py) and the
    bf16 encoder must stay within bfloat16 rounding of the float32 one."""
    import re
    cfg32 = tiny()
    cfg16 = tiny(dtype="bfloat16")
    variables = random_variables(cfg32, ctc_head=False)
    rng = np.random.default_rng(3)
    # 160 frames -> 40 per row after 4x subsampling: 80 rows, above precision.SMALL_ROWS.
    x, lengths = jnp.asarray(rng.standard_normal((2, 160, 16)), jnp.float32), jnp.array([160, 100])
    f16 = jax.jit(ConformerEncoder(cfg16).apply)
    text = f16.lower(variables, x, lengths).as_text()
    dots = re.findall(r"stablehlo.dot_general.*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", text)
    bf16_in = [d for d in dots if d[0].endswith("xbf16>") and d[1].endswith("xbf16>")]
    # Per block: 2 + 2 feed-forward linears, 2 pointwise convs, q/k/v/pos/out projections,
    # 3 attention products; plus the subsampling's output linear.
    assert len(bf16_in) == cfg16.n_layers * 14 + 1, dots
    assert all(d[2].endswith("xf32>") for d in bf16_in), bf16_in
    got, got_len = f16(variables, x, lengths)
    want, want_len = jax.jit(ConformerEncoder(cfg32).apply)(variables, x, lengths)
    assert got.dtype == jnp.bfloat16 and np.array_equal(got_len, want_len)
    # Layer-normed outputs (unit scale) of 2 blocks computed in bfloat16 (8 mantissa bits):
    # measured max 0.032, mean 0.0048 against float32; the bounds allow 2.5x that.
    valid = np.arange(got.shape[1])[None, :] < np.asarray(got_len)[:, None]
    err = np.abs(np.asarray(got, np.float32) - np.asarray(want))[valid]
    assert err.max() < 0.08 and err.mean() < 0.012, (err.max(), err.mean())
