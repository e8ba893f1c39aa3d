"""A tiny speech-LLM model directory for the eval and chat tests, built on align_fixtures' world.

    world = make_world(tmp_path)                  # tokenizer, frozen Llama, conformer CTC (random)
    aligned = make_speech_llm(world)              # a ``speech_llm`` dir (random projector)

The export mirrors train/align.py's ``export`` (SpeechLLMConfig + llm_dir/tokenizer/vocab),
so what loads here is what the align stage writes.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.models import model_dir
from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.models.conformer import ConformerConfig
from audiochat_jax.models.llama import LlamaConfig, init_params
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.text.tokenizer import train_sentencepiece
from audiochat_jax.models import conformer, speech_llm
from audiochat_jax.models.projector import ProjectorConfig
from audiochat_jax.text.chat_template import audio_prompt_parts
from audiochat_jax.text.tokenizer import Tokenizer


# align_fixtures' tiny shapes (not imported: that module pulls in TFDS, slow to import).
WORDS = "the cat sat on a mat what is seven plus twelve where does anna live red blue dog".split()
LLM = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=128,
           dtype="float32", param_dtype="float32")
ENCODER = dict(n_mels=32, d_model=32, n_layers=1, n_heads=2, ffn_dim=64, conv_kernel_size=5,
               subsampling="dw_striding", subsampling_factor=4, subsampling_channels=8,
               dropout=0.0, attention_dropout=0.0, dtype="float32", param_dtype="float32")


def random_like(shapes, seed: int) -> dict:
    """Random variables for ``jax.eval_shape(model.init, ...)`` without compiling the init (an
    XLA compile of the conformer's init costs ~30 s on a busy CPU): kernels ~ N(0, 1/fan_in),
    norm scales and running variances 1, biases and running means 0."""
    rng = np.random.default_rng(seed)

    def make(path, x):
        name = jax.tree_util.keystr(path)
        shape = x.value.shape if hasattr(x, "value") else x.shape
        if name.endswith("['scale']") or name.endswith("['var']"):
            return np.ones(shape, np.float32)
        if len(shape) < 2:
            return np.zeros(shape, np.float32)
        fan_in = int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(make, __import__("flax").linen.unbox(shapes))


def make_world(root, corpus=(), llm_init_scale: float = 10.0, max_seq_len: int = 128,
               vocab_size: int = 300) -> dict:
    """align_fixtures' models without its TFDS dataset (the eval renders its own audio)."""
    root = str(root)
    corpus = list(corpus) + [" ".join(WORDS)] * 3 + ["[INST] <<SYS>> [/INST] translate to french: "]
    tok = Tokenizer(train_sentencepiece(corpus, os.path.join(root, "spm"), vocab_size=vocab_size))
    # Kernels ~N(0, 1/fan_in) (~10x HF's 0.02) so the random LLM's outputs depend on its input.
    llm_cfg = LlamaConfig(vocab_size=tok.vocab_size, **{**LLM, "max_seq_len": max_seq_len})
    params = random_like(jax.eval_shape(lambda: init_params(llm_cfg, jax.random.key(7))), 7)
    params["embedding"] *= llm_init_scale / 2  # N(0, 1/vocab) rows would be near-silent
    llm_dir = os.path.join(root, "llm")
    os.makedirs(llm_dir, exist_ok=True)
    with open(tok.model_path, "rb") as f, open(os.path.join(llm_dir, "tokenizer.model"), "wb") as g:
        g.write(f.read())
    model_dir.save_model_dir(llm_dir, "llama", llm_cfg.to_dict(), params, tokenizer="tokenizer.model")
    vocab = CharVocab.english()
    enc_cfg = ConformerConfig(vocab_size=vocab.size, **ENCODER)
    enc_dir = os.path.join(root, "conformer")
    model = conformer.ConformerCTC(enc_cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(3), jnp.zeros((1, 64, enc_cfg.n_mels)), jnp.array([64]))
    conformer.save(enc_dir, enc_cfg, random_like(shapes, 3),
                   features=FeatureConfig(n_mels=32).to_dict(), vocab=vocab.to_dict())
    return {"root": root, "tok": tok, "llm": llm_dir, "encoder": enc_dir}


def make_speech_llm(world: dict, name: str = "aligned", scale: float = 1.0) -> str:
    enc_cfg, enc_vars, meta = conformer.load(world["encoder"])
    llm_meta = model_dir.read_model_config(world["llm"], "llama")
    llm_dim = llm_meta["config"]["dim"]
    proj = ProjectorConfig(in_dim=enc_cfg.d_model, out_dim=llm_dim, stack=2, kind="mlp")
    spec_prefix, spec_suffix = audio_prompt_parts(Tokenizer(os.path.join(world["llm"], "tokenizer.model")))
    spec = speech_llm.SpeechLLMConfig(encoder=enc_cfg.to_dict(), projector=proj.to_dict(),
                                      features=meta["features"], llm=llm_meta["config"], ctc_head=True,
                                      prefix_ids=tuple(spec_prefix), suffix_ids=tuple(spec_suffix))
    embedder = spec.embedder()
    variables = random_like(jax.eval_shape(embedder.init, jax.random.key(11), jnp.zeros((1, 64, enc_cfg.n_mels)),
                                           jnp.array([64])), 11)
    # Graft the conformer's trained (here: random but fixed) encoder + CTC head, as align does.
    variables["params"]["encoder"] = enc_vars["params"]["encoder"]
    if "ctc_head" in enc_vars["params"]:
        variables["params"]["ctc_head"] = enc_vars["params"]["ctc_head"]
    if "batch_stats" in enc_vars:
        variables["batch_stats"] = enc_vars["batch_stats"]
    variables["params"]["projector"] = jax.tree.map(lambda x: x * scale, variables["params"]["projector"])
    out = os.path.join(world["root"], name)
    model_dir.save_model_dir(out, speech_llm.KIND, spec.to_dict(), variables,
                             llm_dir=os.path.abspath(world["llm"]),
                             tokenizer=os.path.join(os.path.abspath(world["llm"]), "tokenizer.model"),
                             vocab=meta["vocab"], system="", instruction="{content}")
    return out
