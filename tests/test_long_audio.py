"""Long recordings in overlapping windows (models/long_audio.py), the chat wiring and the
long-recording QA item builder (eval/long_audio.py).

What can honestly be asserted about windowed encoding:
* a window covering the whole recording IS the whole-recording path (the encoder masks
  padding), for any encoder;
* for an encoder with a LOCAL receptive field (no attention blocks: subsampling convs +
  projector), the stitched centres equal the whole-recording encoding exactly once half the
  overlap exceeds that field -- and differ at the seams without overlap (so the index
  bookkeeping is checked against an independent path, not against itself);
* with global self-attention, a kept embedding can only equal the encoding of its own window
  (checked against the embedder applied to that window's features directly); its distance
  to the whole-recording encoding is an approximation error, measured (bench), not asserted.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from eval_fixtures import ENCODER, make_speech_llm, make_world, random_like
from audiochat_jax.audio.features import FeatureConfig, log_mel
from audiochat_jax.models import long_audio, speech_llm
from audiochat_jax.models.conformer import ConformerConfig
from audiochat_jax.models.projector import ProjectorConfig

FC = FeatureConfig(n_mels=32)
SR = 16000


def _embedder(n_layers: int, seed: int = 0):
    enc = ConformerConfig(**{**ENCODER, "n_layers": n_layers})
    emb = speech_llm.AudioEmbedder(enc, ProjectorConfig(in_dim=enc.d_model, out_dim=16, stack=2, kind="mlp"))
    shapes = jax.eval_shape(emb.init, jax.random.key(0), jnp.zeros((1, 64, enc.n_mels)), jnp.array([64]))
    return emb, random_like(shapes, seed)


def _wave(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)            # so frames differ along time
    return (0.3 * env * np.sin(2 * np.pi * 300 * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def _whole(emb, variables, wave):
    """The whole-recording path (one jitted call on the unpadded recording): [A, dim]."""
    fn = jax.jit(lambda v, w, n: speech_llm.embed_audio(emb, v, FC, w, n))
    out = fn(variables, jnp.asarray(wave)[None], jnp.array([len(wave)]))
    return np.asarray(out["embeddings"][0, :int(out["lengths"][0])])


@pytest.fixture(scope="module")
def attn():
    return _embedder(1)


@pytest.fixture(scope="module")
def local():
    return _embedder(0, seed=1)


def test_one_window_covering_the_recording_equals_the_whole_path(attn):
    emb, v = attn
    wave = _wave(2.3)
    whole = _whole(emb, v, wave)
    got = long_audio.encode_long(emb, v, FC, wave, chunk_seconds=4.0, overlap_seconds=1.0)
    assert got.shape == whole.shape == (long_audio.embedding_count(len(wave), emb, FC), 16)
    np.testing.assert_allclose(got, whole, atol=2e-5, rtol=1e-5)


def test_local_encoder_stitched_centres_equal_the_whole_path_and_need_the_overlap(local):
    emb, v = local
    wave = _wave(5.05)
    whole = _whole(emb, v, wave)
    # 1.0 s windows = 12 or 13 embeddings of 80 ms; overlap 4 embeddings (2 of context per side).
    got = long_audio.encode_long(emb, v, FC, wave, chunk_seconds=1.0, overlap_seconds=0.32)
    w, o = long_audio.window_embeddings(emb, 1.0, 0.32, FC)
    assert (w, o) == (12, 4) and got.shape == whole.shape
    assert long_audio.plan_windows(len(wave) // FC.hop_length, 8, w, o).n_windows > 5
    np.testing.assert_allclose(got, whole, atol=2e-5, rtol=1e-5)
    # Without overlap, the windows' zero padding replaces real neighbours at every seam.
    seamless = long_audio.encode_long(emb, v, FC, wave, chunk_seconds=1.0, overlap_seconds=0.0)
    assert seamless.shape == whole.shape
    assert np.abs(seamless - whole).max() > 1e-2


def test_attention_encoder_keeps_each_windows_centre(attn):
    emb, v = attn
    wave = _wave(9.7, seed=3)
    # The window shape of the first test (4 s = 50 embeddings): its compilation is reused.
    got = long_audio.encode_long(emb, v, FC, wave, chunk_seconds=4.0, overlap_seconds=1.0)
    assert got.shape[0] == long_audio.embedding_count(len(wave), emb, FC)
    # Reference: the embedder on each window's slice of the whole recording's features.
    feats, n = log_mel(jnp.asarray(wave)[None], jnp.array([len(wave)]), FC)
    feats, n = np.asarray(feats[0]), int(n[0])
    w, o = long_audio.window_embeddings(emb, 4.0, 1.0, FC)
    plan = long_audio.plan_windows(n, 8, w, o)
    assert (w, o, plan.n_windows) == (50, 12, 3)
    assert plan.keep[0][0] == 0 and plan.keep[-1][1] == got.shape[0]
    assert all(a[1] == b[0] for a, b in zip(plan.keep, plan.keep[1:]))
    apply = jax.jit(emb.apply)
    for s, (lo, hi) in zip(plan.starts, plan.keep):
        x = np.zeros((w * 8, FC.n_mels), np.float32)
        part = feats[s * 8:(s + w) * 8]
        x[:len(part)] = part
        ref = apply(v, jnp.asarray(x)[None], jnp.array([min(w * 8, n - s * 8)]))["embeddings"][0]
        np.testing.assert_allclose(got[lo:hi], np.asarray(ref)[lo - s:hi - s], atol=2e-5, rtol=1e-5)


def test_one_compilation_per_window_size_whatever_the_length(local):
    emb, v = local
    before = long_audio.TRACES["window"]
    counts = []
    for seconds in (1.1, 2.9, 6.3):
        # A fresh but equal embedder each time, as SpeechModel.spec.embedder() gives.
        e = speech_llm.AudioEmbedder(emb.encoder, emb.projector)
        out = long_audio.encode_long(e, v, FC, _wave(seconds), chunk_seconds=1.28, overlap_seconds=0.32)
        counts.append(out.shape[0])
    assert long_audio.TRACES["window"] - before == 1
    assert counts == [long_audio.embedding_count(int(s * SR), emb, FC) for s in (1.1, 2.9, 6.3)]


def test_extra_stride_halves_the_count_by_averaging_neighbours(local):
    emb, v = local
    wave = _wave(2.9)                                        # 290 frames: 37 embeddings
    one = long_audio.encode_long(emb, v, FC, wave, chunk_seconds=1.0, overlap_seconds=0.32)
    two = long_audio.encode_long(emb, v, FC, wave, chunk_seconds=1.0, overlap_seconds=0.32, extra_stride=2)
    assert one.shape[0] % 2 == 1 and two.shape[0] == (one.shape[0] + 1) // 2
    assert two.shape[0] == long_audio.embedding_count(len(wave), emb, FC, extra_stride=2)
    np.testing.assert_allclose(two[:-1], (one[0:-1:2] + one[1::2]) / 2, atol=1e-6)
    np.testing.assert_allclose(two[-1], one[-1], atol=1e-6)   # the odd one out is its own mean


def test_context_error_names_the_stride_that_fits():
    with pytest.raises(ValueError, match=r"talk\.wav \(40\.0 s\).*500 audio embeddings.*raise extra_stride "
                                         r"to 3.*shorter than 16 s"):
        long_audio.check_context(500, 256, 56, seconds=40.0, where="talk.wav")
    long_audio.check_context(200, 256, 56)  # fits: no error
    with pytest.raises(ValueError, match="no room for audio"):
        long_audio.check_context(10, 64, 64)


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """A tiny random speech_llm directory (eval_fixtures) with a 256-slot LLM context."""
    return make_speech_llm(make_world(tmp_path_factory.mktemp("long"), max_seq_len=256))


def test_chat_encodes_long_audio_in_windows_and_refuses_what_cannot_fit(aligned, tmp_path, capsys):
    from audiochat_jax import chat
    from audiochat_jax.inference import dialog as dialog_lib
    from audiochat_jax.inference.speech_model import SpeechModel
    wav = os.path.join(str(tmp_path), "long.wav")
    wave = _wave(25.0)
    sf.write(wav, wave, SR, subtype="FLOAT")
    # 25 s = 313 embeddings of 80 ms: more than the 256-slot context.
    assert chat.main(["--ckpt", aligned, "--audio", wav, "--chunk_seconds", "4", "--overlap_seconds", "1",
                      "--max_new_tokens", "4"]) == 1
    err = capsys.readouterr().err
    assert "long.wav (25.0 s) gives 313 audio embeddings" in err and "raise extra_stride to 2" in err
    model = SpeechModel.load(aligned, batch_rows=1, chunk_seconds=4.0, overlap_seconds=1.0, extra_stride=2)
    dialog = dialog_lib.Dialog(model.tokenizer)
    chat.user_turn(model, dialog, wav, reserve=4)
    ref = long_audio.encode_long(model.spec.embedder(), model.variables, model.features, sf.read(wav)[0],
                                 chunk_seconds=4.0, overlap_seconds=1.0, extra_stride=2)
    assert dialog.parts[1].shape == ref.shape == (157, model.llm_config.dim)
    np.testing.assert_allclose(dialog.parts[1], ref, atol=1e-6)
    # Short audio still takes the batched whole-recording path, next to a long one.
    emb, n = model.embed_audio([wave[:SR], wave])
    assert list(n) == [long_audio.embedding_count(SR, model.spec.embedder(), model.features), 157]


@pytest.fixture(scope="module")
def world():
    from audiochat_jax.data.mini_world import MiniWorld
    return MiniWorld(seed=0, n_entities=8, n_asr_train=40, n_asr_test=6, n_lm_dialogs=50, n_eval=8)


def test_long_qa_items_state_the_asked_fact_once_at_the_intended_position(world):
    from audiochat_jax.data.mini_lexicon import ATTRIBUTES
    from audiochat_jax.eval import long_audio as lq
    for counterfactual in (False, True):
        items = lq.build_items(world, 12, 5, ("early", "middle", "late"), counterfactual=counterfactual)
        assert [it.position for it in items[:3]] == ["early", "middle", "late"]
        assert [it.target for it in items[:3]] == [0, 2, 4]
        for it in items:
            name = next(n for n in sorted({n for n, _ in world.facts}, key=len, reverse=True)
                        if n in it.question.split() or f"{n}'s" in it.question.split())
            forms = {f.format(n=name, v=it.answer) for f in ATTRIBUTES[it.answer_type][3]}
            assert it.statements[it.target] in forms
            # No other statement says anything about this person's attribute.
            others = {f.format(n=name, v=v) for f in ATTRIBUTES[it.answer_type][3]
                      for v in ATTRIBUTES[it.answer_type][0]}
            assert not others & set(it.statements[:it.target] + it.statements[it.target + 1:])
            assert (it.answer != world.facts[(name, it.answer_type)]) == counterfactual
            assert it.is_correct(f"{it.question} is {it.answer}.") and len(set(it.statements)) == 5
        same = [sum(a == it.answer_type for s in it.statements for a in ATTRIBUTES
                    if any(s == f.format(n=n, v=v) for n, _ in world.facts for f in ATTRIBUTES[a][3]
                           for v in ATTRIBUTES[a][0])) for it in items]
        assert min(same) >= 3   # the asked statement + (5 - 1) // 2 others of its attribute


def test_long_qa_records_with_silences_and_scores_three_paths(world, aligned):
    from audiochat_jax.eval import long_audio as lq
    from audiochat_jax.inference.prompting import Prompter
    from audiochat_jax.inference.speech_model import SpeechModel
    items = lq.build_items(world, 2, 3, ("early", "late"))
    waves, spans = lq.record(items, {"seed": 5}, voices="seen", silence_seconds=0.25)
    for w, sp in zip(waves, spans):
        assert len(sp) == 3 and abs(sp[-1][1] - len(w) / SR) < 1e-9
        for (_, end), (start, _) in zip(sp, sp[1:]):
            assert abs(start - end - 0.25) < 1e-9
            assert not np.any(w[int(round(end * SR)):int(round(start * SR))])
    model = SpeechModel.load(aligned)
    # One width bucket (128) for all three paths: the generator compiles once.
    prompter = Prompter(model, batch_size=2, max_new_tokens=3, width_multiple=128)
    result = lq.long_qa(prompter, items, waves, chunk_seconds=4.0,   # the chat test's windows
                        overlap_seconds=1.0, extra_stride=2, system=model.system)
    assert result["n_items"] == 2 and set(result["by_position"]) == {"early", "late"}
    assert result["audio_embeddings"] == np.mean([long_audio.embedding_count(len(w), model.spec.embedder(),
                                                                             model.features, 2) for w in waves])
    assert all(0.0 <= result["accuracy"][p] <= 1.0 for p in lq.PATHS)
    assert "| early | 1 |" in lq.markdown(result)
    assert result["seconds"] > 2.0
    with pytest.raises(ValueError, match="raise extra_stride to"):   # 10 x 2+ s of audio: 250+ embeddings
        lq.long_qa(prompter, items[:1], [np.tile(waves[0], 10)],
                   chunk_seconds=4.0, overlap_seconds=1.0, system=model.system)
