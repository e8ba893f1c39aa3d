"""A tiny alignment world built on the spot (no downloads): tokenizer, frozen Llama, conformer
CTC model, TFDS speech dataset of distinct tones, and responses keyed by utterance id.

The responses are what the real pipeline stores (data/responses.py): the frozen LLM's own
greedy answer to the chat prompt holding the transcript, so every target is reachable by
construction (the text prompt already produces it) and an audio prompt can learn to.

    world = make_world(tmp_path)          # ~10 s
    config = align_config(world, "--config.total_steps=5", ...)   # parsed like the CLI
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from etils import epath
from ml_collections import config_flags

from audiochat_jax.models import model_dir
from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.data.speech_datasets import speech_features
from audiochat_jax.models import conformer
from audiochat_jax.models.conformer import ConformerConfig
from audiochat_jax.models.generate import generate
from audiochat_jax.models.llama import LlamaConfig, init_params
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece
from speech_fixtures import tone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the cat sat on a mat what is seven plus twelve where does anna live red blue dog".split()
# (id, split, transcript, seconds)
UTTERANCES = [
    ("tr0", "train", "the cat sat on a mat", 0.40),
    ("tr1", "train", "what is seven plus twelve", 0.55),
    ("tr2", "train", "where does anna live", 0.45),
    ("tr3", "train", "the blue dog", 0.30),
    ("te0", "test", "what is the red cat", 0.50),
    ("te1", "test", "anna sat on a dog", 0.35),
]
MAX_RESPONSE = 12  # = world_flags' max_response_length: a longer answer is truncated, as the
                   # responses stage truncates at its max_new_tokens


class AlignToySpeech(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The speech schema with tone audio (a distinct pitch per utterance) at 16 kHz."""
    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # tests/ is not a package

    def _info(self):
        return self.dataset_info_from_configs(features=speech_features())

    def _split_generators(self, dl_manager):
        return {s: self._generate_examples(s) for s in sorted({u[1] for u in UTTERANCES})}

    def _generate_examples(self, split):
        for k, (uid, s, text, seconds) in enumerate(UTTERANCES):
            if s == split:
                yield uid, {"id": uid, "audio": tone(100 + k, seconds), "text": text, "speaker": "s0"}


LLM = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=128,
           dtype="float32", param_dtype="float32")
ENCODER = dict(n_mels=32, d_model=32, n_layers=2, n_heads=2, ffn_dim=64, conv_kernel_size=5,
               # "striding": the depthwise conv of "dw_striding" gets a different kernel gradient
               # on a (2, 2, 2) mesh than on one device (reported; tests/test_align_step.py).
               subsampling="striding", subsampling_factor=4, subsampling_channels=8,
               dropout=0.0, attention_dropout=0.0, dtype="float32", param_dtype="float32")


def make_world(root, llm_init_scale: float = 10.0, head_scale: float = 1.0) -> dict:
    """Writes everything under ``root``; returns the paths and the tokenizer."""
    root = str(root)
    corpus = [u[2] for u in UTTERANCES] + [" ".join(WORDS)] * 3
    tok = Tokenizer(train_sentencepiece(corpus + ["[INST] <<SYS>> [/INST]"], os.path.join(root, "spm"),
                                        vocab_size=300))
    # The frozen LLM: random, with weights ~10x HF's 0.02 so its outputs depend on the input
    # (at 0.02 the logits are near-uniform whatever the prompt).
    llm_cfg = LlamaConfig(vocab_size=tok.vocab_size, **LLM)
    params = jax.tree.map(lambda x: x * llm_init_scale if x.ndim >= 2 else x,
                          jax.tree.map(np.asarray, _unbox(init_params(llm_cfg, jax.random.key(7)))))
    # ``head_scale``: a trained chat LLM is confident in its own greedy answers; the random one
    # is not (text-prompted CE on them ~3.1 nats, log(300) = 5.7), which floors any prompt's
    # CE far above 0. A power of two scales the logits exactly, so the argmax (the greedy
    # answers) is unchanged; only the confidence grows (16: text-prompted CE ~0.18).
    params["lm_head"] = params["lm_head"] * np.float32(head_scale)
    llm_dir = os.path.join(root, "llm")
    os.makedirs(llm_dir, exist_ok=True)
    shutil.copyfile(tok.model_path, os.path.join(llm_dir, "tokenizer.model"))
    model_dir.save_model_dir(llm_dir, "llama", llm_cfg.to_dict(), params, tokenizer="tokenizer.model")
    # The "pre-trained" conformer CTC model (random here; alignment only needs its shapes).
    vocab = CharVocab.english()
    enc_cfg = ConformerConfig(vocab_size=vocab.size, **ENCODER)
    enc_vars = conformer.init_variables(enc_cfg, jax.random.key(3))
    enc_dir = os.path.join(root, "conformer")
    conformer.save(enc_dir, enc_cfg, enc_vars, features=FeatureConfig(n_mels=32).to_dict(),
                   vocab=vocab.to_dict())
    builder = AlignToySpeech(data_dir=os.path.join(root, "tfds"))
    builder.download_and_prepare()
    targets = greedy_answers(llm_cfg, params, tok, [u[2] for u in UTTERANCES])
    targets = dict(zip((u[0] for u in UTTERANCES), targets))
    responses = os.path.join(root, "responses.jsonl")
    with open(responses, "w") as f:
        for uid, ids in targets.items():
            f.write(json.dumps({"id": uid, "response_ids": ids}) + "\n")
    return {"root": root, "tok": tok, "llm": llm_dir, "encoder": enc_dir, "data": str(builder.data_dir),
            "responses": responses, "targets": targets, "llm_params": params}


def greedy_answers(llm_cfg: LlamaConfig, params, tok: Tokenizer, texts) -> list[list[int]]:
    """The LLM's greedy reply to each transcript, as data/responses.py makes it: the prompt of
    ``responses.prompt_ids`` (no system prompt, instruction "{content}"), up to MAX_RESPONSE
    new tokens, the EOS kept when produced. One right-padded batch (one compile)."""
    from audiochat_jax.data.responses import ResponsesConfig, prompt_ids
    rc = ResponsesConfig(llm_dir="-", tokenizer="-", dataset_dir="-", out_dir="-", max_new_tokens=MAX_RESPONSE)
    prompts = [prompt_ids(tok, t, rc) for t in texts]
    width = max(map(len, prompts))
    ids = np.zeros((len(prompts), width), np.int32)
    mask = np.zeros((len(prompts), width), bool)
    for i, p in enumerate(prompts):
        ids[i, :len(p)], mask[i, :len(p)] = p, True
    new, lengths = generate(llm_cfg, params, tokens=ids, mask=mask, max_new_tokens=MAX_RESPONSE,
                            eos_id=tok.eos_id, pad_id=tok.pad_id)
    return [np.asarray(new[i, :int(lengths[i])]).tolist() for i in range(len(prompts))]


def _unbox(tree):
    import flax.linen as nn
    return nn.unbox(tree)


def align_config(world: dict, *overrides: str, config_file: str = "configs/align_mini_smoke.py"):
    """The config file parsed with the world's paths and ``overrides``, exactly as the CLI does."""
    argv = ["prog", f"--config={os.path.join(REPO, config_file)}", *world_flags(world), *overrides]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def world_flags(world: dict) -> list[str]:
    """Command-line overrides pointing the align config at ``world`` with tiny shapes."""
    return [f"--config.align.llm_dir={world['llm']}", f"--config.align.encoder_dir={world['encoder']}",
            f"--config.align.data_dir={world['data']}", f"--config.align.responses={world['responses']}",
            "--config.align.buckets=(9600,)", "--config.align.max_label_length=32",
            f"--config.align.max_response_length={MAX_RESPONSE}", "--config.align.eval_splits=('test',)",
            "--config.align.shuffle_buffer=16", "--config.align.ctc_weight=0.0", "--config.batch_size=4",
            "--config.log_every=1"]
