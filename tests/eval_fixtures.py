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

from align_fixtures import make_world  # noqa: F401  (re-exported for the tests)
from audiochat_jax import model_dir
from audiochat_jax.models import conformer, speech_llm
from audiochat_jax.models.projector import ProjectorConfig
from audiochat_jax.text.chat_template import audio_prompt_parts
from audiochat_jax.text.tokenizer import Tokenizer


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
    variables = embedder.init(jax.random.key(11), jnp.zeros((1, 64, enc_cfg.n_mels)), jnp.array([64]))
    variables = jax.tree.map(np.asarray, __import__("flax").linen.unbox(variables))
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
