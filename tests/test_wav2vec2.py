"""wav2vec2 / HuBERT encoder: parity with transformers PyTorch on tiny random checkpoints.

Each checkpoint is a random transformers model (every tensor randomised, so biases, norm
affines and the weight-normed position conv all matter), saved with ``save_pretrained``
and converted by the real CLI. Tolerance: 1e-4 absolute in float32 on every hidden state,
valid frames only (frames past an utterance's length are padding in both models).

Padding and the GroupNorm variant: HF's first-layer GroupNorm takes statistics over the
padding too (HF documents that wav2vec2-base must be run unpadded, without attention_mask).
Our default masks those statistics, so the honest reference for a padded batch is HF run on
each utterance alone; the ``--group_norm_stats_over_padding`` conversion reproduces HF's
padded batch (with attention_mask) instead. Both are tested.
"""
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from audiochat_jax.convert import __main__ as convert_cli
from audiochat_jax.models import wav2vec2 as w2v
from audiochat_jax.parallel import sharding

TOL = 1e-4
LENGTHS = (1600, 1100, 731)  # samples; different frame counts after the 5-2-2 conv stack
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            conv_dim=[16, 16, 16], conv_stride=[5, 2, 2], conv_kernel=[10, 3, 3],
            num_conv_pos_embedding_groups=4, attn_implementation="eager")
VARIANTS = {
    # wav2vec2-base layout: GroupNorm on conv 0, post-LN layers, even position-conv width,
    # mask_time_prob > 0 so masked_spec_embed is converted too.
    "base": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model, True,
             dict(feat_extract_norm="group", do_stable_layer_norm=False, num_conv_pos_embeddings=16,
                  mask_time_prob=0.05)),
    # large / lv60 layout: LayerNorm on every conv (with bias), pre-LN layers + final LN, odd
    # position-conv width, masked_spec_embed present but unused (feature masking only).
    "stable": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model, True,
               dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
                    num_conv_pos_embeddings=7, mask_time_prob=0.0, mask_feature_prob=0.1)),
    # HuBERT without the feature-projection LayerNorm and without waveform normalisation.
    "hubert": (transformers.HubertConfig, transformers.HubertModel, False,
               dict(feat_extract_norm="group", do_stable_layer_norm=False, feat_proj_layer_norm=False,
                    num_conv_pos_embeddings=16, mask_time_prob=0.0)),
    "ctc": (transformers.Wav2Vec2Config, transformers.Wav2Vec2ForCTC, True,
            dict(feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=8,
                 mask_time_prob=0.0, vocab_size=12, pad_token_id=0)),
}


def _randomise(model, seed):
    """Every parameter random (HF init leaves biases 0 and norms 1, which would hide mapping bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * r)
            elif "original0" in name or name.endswith("weight_g"):  # weight-norm gain
                p.copy_(0.5 + r.abs())
            elif p.ndim > 1:  # kernels: unit-variance outputs, fan-in = all but the output axis
                p.copy_(r / p[0].numel() ** 0.5)
            else:  # biases, masked_spec_embed
                p.copy_(0.2 * r)
    return model.eval()


def _waves(seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(max(LENGTHS)) / 16000
    waves = [(0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t[:n]) + 0.1 * rng.normal(size=n) + 0.05 * i)
             .astype(np.float32) * (1 + i) for i, n in enumerate(LENGTHS)]
    padded = np.zeros((len(LENGTHS), max(LENGTHS)), np.float32)
    for i, w in enumerate(waves):
        padded[i, :len(w)] = w
    return waves, padded, np.array(LENGTHS, np.int32)


def _convert(tmp_path_factory, variant, *flags):
    cfg_cls, model_cls, do_norm, kw = VARIANTS[variant]
    src = tmp_path_factory.mktemp(f"hf_{variant}")
    model = _randomise(model_cls(cfg_cls(**TINY, **kw)), seed=len(variant))
    model.save_pretrained(src)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=do_norm, return_attention_mask=True).save_pretrained(src)
    if variant == "ctc":
        (src / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate("_|abcdefghij")}))
    out = tmp_path_factory.mktemp(f"ours_{variant}")
    assert convert_cli.main(["wav2vec2", "--src", str(src), "--out", str(out), *flags]) == 0
    config, variables, meta = w2v.load(str(out))
    return model, config, variables, meta


def _hf_inputs(waves, do_norm, padded):
    fe = transformers.Wav2Vec2FeatureExtractor(do_normalize=do_norm, return_attention_mask=True)
    if padded:
        batch = fe(waves, sampling_rate=16000, padding=True, return_tensors="pt")
        return batch["input_values"], batch["attention_mask"]
    return [fe(w, sampling_rate=16000, return_tensors="pt")["input_values"] for w in waves]


def _ours(config, variables, padded, lengths):
    model = w2v.model_for(config)
    (out, out_lengths), state = jax.jit(lambda v, x, n: model.apply(v, x, n, mutable=["intermediates"]))(
        variables, padded, lengths)
    states = w2v.hidden_states(state) if config.ctc_vocab_size == 0 else \
        state["intermediates"]["encoder"]["hidden_states"]
    return np.asarray(out), np.asarray(out_lengths), [np.asarray(h) for h in states]


def _assert_close(ours, ref, n, what):
    diff = float(np.max(np.abs(ours[:n] - ref[:n])))
    assert diff <= TOL, f"{what}: max abs diff {diff:.2e} > {TOL}"
    print(f"{what}: max abs diff {diff:.1e} (|ref| max {float(np.max(np.abs(ref[:n]))):.2f})")
    return diff


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    cache = {}

    def get(variant, *flags):
        if (variant, flags) not in cache:
            cache[(variant, flags)] = _convert(tmp_path_factory, variant, *flags)
        return cache[(variant, flags)]
    return get


def _compare_padded_batch(model, config, variables, do_norm):
    """Ours on the padded batch vs HF on the same padded batch with attention_mask."""
    waves, padded, lengths = _waves()
    values, mask = _hf_inputs(waves, do_norm, padded=True)
    with torch.no_grad():
        ref = model(values, attention_mask=mask, output_hidden_states=True)
    out, out_lengths, states = _ours(config, variables, padded, lengths)
    ref_lengths = model._get_feat_extract_output_lengths(torch.tensor(LENGTHS)).numpy()
    np.testing.assert_array_equal(out_lengths, ref_lengths)
    main = ref.logits if hasattr(ref, "logits") else ref.last_hidden_state
    for b, n in enumerate(out_lengths):
        _assert_close(out[b], main[b].numpy(), n, f"utterance {b} output")
        if config.ctc_vocab_size == 0:  # (CTC logits there are the head's bias)
            assert not out[b, n:].any(), "frames past out_lengths must be zero"
        assert len(states) == len(ref.hidden_states) == config.num_layers + 1
        for i, (h, r) in enumerate(zip(states, ref.hidden_states)):
            _assert_close(h[b], r[b].numpy(), n, f"utterance {b} hidden state {i}")


def test_stable_layer_norm_wav2vec2_matches_hf_padded_batch_with_attention_mask(converted):
    model, config, variables, _ = converted("stable")
    assert config.feat_extract_norm == "layer" and config.do_stable_layer_norm and config.mask_time_prob == 0
    _compare_padded_batch(model, config, variables, do_norm=True)


def test_group_norm_wav2vec2_padded_batch_matches_hf_on_each_unpadded_utterance(converted):
    model, config, variables, _ = converted("base")
    assert config.group_norm_masked and "masked_spec_embed" in variables["params"]
    waves, padded, lengths = _waves()
    out, out_lengths, states = _ours(config, variables, padded, lengths)
    for b, values in enumerate(_hf_inputs(waves, True, padded=False)):
        with torch.no_grad():
            ref = model(values, output_hidden_states=True)
        n = out_lengths[b]
        assert ref.last_hidden_state.shape[1] == n
        _assert_close(out[b], ref.last_hidden_state[0].numpy(), n, f"utterance {b} last_hidden_state")
        for i, (h, r) in enumerate(zip(states, ref.hidden_states)):
            _assert_close(h[b], r[0].numpy(), n, f"utterance {b} hidden state {i}")


def test_group_norm_stats_over_padding_flag_matches_hf_padded_batch(converted):
    model, config, variables, _ = converted("base", "--group_norm_stats_over_padding")
    assert not config.group_norm_masked
    _compare_padded_batch(model, config, variables, do_norm=True)
    # ...and that HF's padded batch really differs from the per-utterance result, i.e. the two
    # references above are distinct claims.
    waves, _, _ = _waves()
    values, mask = _hf_inputs(waves, True, padded=True)
    with torch.no_grad():
        batch = model(values, attention_mask=mask).last_hidden_state[2]
        alone = model(_hf_inputs(waves, True, padded=False)[2]).last_hidden_state[0]
    assert float((batch[:alone.shape[0]] - alone).abs().max()) > 1e-3


def test_hubert_without_projection_norm_or_normalisation_matches_hf(converted):
    model, config, variables, meta = converted("hubert")
    assert meta["source_model_type"] == "hubert" and not config.feat_proj_layer_norm and not config.do_normalize
    waves, padded, lengths = _waves()
    out, out_lengths, _ = _ours(config, variables, padded, lengths)
    for b, values in enumerate(_hf_inputs(waves, False, padded=False)):
        with torch.no_grad():
            ref = model(values).last_hidden_state[0].numpy()
        _assert_close(out[b], ref, out_lengths[b], f"utterance {b}")


def test_ctc_head_logits_match_hf_and_vocabulary_is_kept(converted):
    model, config, variables, meta = converted("ctc")
    assert config.ctc_vocab_size == 12 and meta["blank_id"] == 0 and meta["vocab"][:3] == ["_", "|", "a"]
    _compare_padded_batch(model, config, variables, do_norm=True)
    enc = w2v.encoder_variables(config, variables)
    assert "lm_head" not in enc["params"] and "feature_extractor" in enc["params"]


def test_head_none_drops_the_ctc_head(converted):
    _, config, variables, _ = converted("ctc", "--head", "none")
    assert config.ctc_vocab_size == 0 and "lm_head" not in variables["params"]


def test_out_lengths_match_hf_formula():
    cfg_hf = transformers.Wav2Vec2Config()  # published base conv stack: 320x stride, 400-sample field
    model = transformers.Wav2Vec2Model(transformers.Wav2Vec2Config(**{**TINY, "conv_dim": cfg_hf.conv_dim,
                                                                      "conv_stride": cfg_hf.conv_stride,
                                                                      "conv_kernel": cfg_hf.conv_kernel}))
    ours = w2v.Wav2Vec2Config(conv_stride=cfg_hf.conv_stride, conv_kernel=cfg_hf.conv_kernel)
    n = np.arange(400, 48000, 97)
    ref = model._get_feat_extract_output_lengths(torch.tensor(n)).numpy()
    np.testing.assert_array_equal(ours.output_lengths(n), ref)
    np.testing.assert_array_equal(np.asarray(jax.jit(ours.output_lengths)(jnp.asarray(n))), ref)
    assert ours.receptive_field == 400 and ours.samples_per_frame == 320
    assert ours.output_lengths(399) == 0 and ours.output_lengths(400) == 1


def _tiny(**kw):
    return w2v.Wav2Vec2Config(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                              conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
                              num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, **kw)


def test_config_round_trips_and_rejects_bad_fields():
    cfg = _tiny(feat_extract_norm="layer", do_stable_layer_norm=True, dtype="bfloat16")
    assert w2v.Wav2Vec2Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    import importlib.util, pathlib  # noqa: E401 - configs/ is a folder of files, not a package
    path = pathlib.Path(__file__).parents[1] / "configs" / "wav2vec2_mini.py"
    spec = importlib.util.spec_from_file_location("wav2vec2_mini", path)
    wav2vec2_mini = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wav2vec2_mini)
    for arg in ("", "smoke"):
        fields = wav2vec2_mini.get_config(arg).encoder.to_dict()
        assert fields.pop("kind") == "wav2vec2"  # the ctc task's encoder selector, then the fields
        mini = w2v.Wav2Vec2Config.from_dict(fields)
        assert mini.samples_per_frame == 320 and mini.ctc_vocab_size > 0
    with pytest.raises(ValueError, match="unknown arg"):
        wav2vec2_mini.get_config("big")
    with pytest.raises(ValueError, match="unknown field.*hidden_dim"):
        w2v.Wav2Vec2Config.from_dict({"hidden_dim": 3})
    with pytest.raises(ValueError, match="feat_extract_norm='batch'"):
        _tiny(feat_extract_norm="batch")
    with pytest.raises(ValueError, match="conv_dim/conv_stride/conv_kernel"):
        _tiny().__class__(conv_dim=(4, 4), conv_stride=(5,), conv_kernel=(10,))
    with pytest.raises(ValueError, match="waveforms \\[batch, samples\\]"):
        w2v.Wav2Vec2Encoder(_tiny()).init(jax.random.key(0), jnp.zeros((1, 50, 80)), jnp.array([50]))


def test_conversion_errors_name_file_and_fix(tmp_path):
    src = tmp_path / "hf"
    hf_cfg = transformers.Wav2Vec2Config(**TINY, num_conv_pos_embeddings=8)
    transformers.Wav2Vec2Model(hf_cfg).save_pretrained(src)
    run = lambda *a: convert_cli.main(["wav2vec2", "--src", str(src), "--out", str(tmp_path / "o"), *a])
    with pytest.raises(SystemExit):
        run("--bogus")
    assert run() == 1  # no preprocessor_config.json and --do_normalize auto
    # A config that does not describe the weights: a named missing tensor.
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    from audiochat_jax.convert.wav2vec2 import ConversionError, convert_hf
    with pytest.raises(ConversionError, match="missing tensor 'encoder.layers.2"):
        convert_hf(str(src), do_normalize="true")
    (src / "config.json").write_text(json.dumps({**cfg, "add_adapter": True}))
    with pytest.raises(ConversionError, match="config.json: add_adapter=True"):
        convert_hf(str(src), do_normalize="true")
    (src / "config.json").write_text(json.dumps({**cfg, "model_type": "wavlm"}))
    with pytest.raises(ConversionError, match="model_type='wavlm' is not supported"):
        convert_hf(str(src), do_normalize="true")
    (src / "config.json").write_text(json.dumps(cfg))
    for f in src.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ConversionError, match="no \\*.safetensors or pytorch_model"):
        convert_hf(str(src), do_normalize="true")


def _random_variables(model, x, n, seed=0):
    """Random params of ``model`` without running ``init`` (whose threefry RNG costs many
    seconds of XLA compile on CPU): (boxed abstract tree, numpy variables)."""
    boxed = jax.eval_shape(model.init, jax.random.key(0), x, n)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        r = rng.normal(size=leaf.shape).astype(np.float32)
        if jax.tree_util.keystr(path).endswith("['scale']"):
            return 1 + 0.2 * r
        return r / np.sqrt(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 0.2 * r
    return boxed, jax.tree_util.tree_map_with_path(draw, nn.unbox(boxed))


def test_every_param_has_known_logical_axes_and_sharded_apply_matches(n_devices):
    cfg = _tiny(mask_time_prob=0.05, ctc_vocab_size=7, conv_bias=True)
    model = w2v.Wav2Vec2CTC(cfg)
    x = jax.random.normal(jax.random.key(1), (4, 1200))
    n = jnp.array([1200, 900, 600, 400], jnp.int32)
    boxed, variables = _random_variables(model, x, n)
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda a: isinstance(a, nn.Partitioned))
    assert leaves and all(isinstance(a, nn.Partitioned) for a in leaves)
    mesh = sharding.make_mesh((2, 2, 2))
    shardings = nn.unbox(sharding.logical_to_sharding(boxed, mesh))  # raises on a name outside the vocabulary
    assert shardings["params"]["encoder"]["layers_0"]["feed_forward"]["intermediate_dense"]["kernel"].spec == \
        jax.sharding.PartitionSpec("fsdp", "tensor")
    expected, _ = jax.jit(model.apply)(variables, x, n)
    with jax.set_mesh(mesh), sharding.axis_rules():
        got, _ = jax.jit(model.apply)(jax.device_put(variables, shardings),
                                      jax.device_put(x, sharding.batch_sharding(mesh, 2)), n)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_remat_gives_same_grads_and_empty_rows_stay_finite():
    x = jax.random.normal(jax.random.key(1), (3, 1200))
    n = jnp.array([1200, 500, 0], jnp.int32)  # a zero-length row, as batch padding would give
    grads = []
    for policy in ("none", "full"):
        # One layer, two convs, eval mode: XLA's CPU compile of the grad is what this test pays for.
        cfg = dataclasses.replace(_tiny(remat_policy=policy), num_layers=1, conv_dim=(16, 16),
                                  conv_stride=(5, 2), conv_kernel=(10, 3))
        model = w2v.Wav2Vec2Encoder(cfg)
        _, variables = _random_variables(model, x, n)
        grads.append(jax.jit(jax.grad(lambda v: jnp.sum(model.apply(v, x, n)[0] ** 2)))(variables))
    flat = [np.concatenate([np.ravel(a) for a in jax.tree_util.tree_leaves(g)]) for g in grads]
    assert np.all(np.isfinite(flat[0])) and np.abs(flat[0]).sum() > 0
    np.testing.assert_allclose(flat[1], flat[0], rtol=1e-5, atol=1e-6)


def test_training_mode_applies_time_masking_on_valid_frames_only():
    cfg = dataclasses.replace(_tiny(mask_time_prob=0.5, mask_time_length=3, hidden_dropout=0.0,
                                    attention_dropout=0.0), num_layers=1)
    model = w2v.Wav2Vec2Encoder(cfg)
    x = jax.random.normal(jax.random.key(1), (2, 1200))
    n = jnp.array([1200, 700], jnp.int32)
    _, variables = _random_variables(model, x, n)
    # With all dropout off, the only training-time change is time masking: the masked frames'
    # projected features become masked_spec_embed, so outputs change but stay finite.
    ev, tr = jax.jit(lambda v: (model.apply(v, x, n)[0],
                                model.apply(v, x, n, train=True, rngs={"dropout": jax.random.key(3)})[0]))(variables)
    assert np.all(np.isfinite(np.asarray(tr))) and float(jnp.abs(tr - ev).max()) > 1e-3
    # The span mask itself: only valid frames, runs of >= mask_time_length frames, and the
    # expected masked fraction 1 - (1 - p / L) ** L of independent span starts.
    lengths = jnp.array([4000, 1000], jnp.int32)
    mask = np.asarray(model.apply(variables, lengths, 4000, rngs={"dropout": jax.random.key(4)},
                                  method=w2v.Wav2Vec2Encoder._time_mask))
    assert not mask[1, 1000:].any()
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], mask[0].astype(int), [0]]))))[::2]
    assert runs.min() >= 3
    assert abs(mask[0].mean() - (1 - (1 - 0.5 / 3) ** 3)) < 0.05
