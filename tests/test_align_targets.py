"""Instruction-conditioned targets in the align task (tiny world of tests/align_fixtures.py).

* held-out families never reach a train batch (their targets are dropped and counted);
* every row's text-prompted twin is, token for token, the chat prompt the LLM answered
  (``encode_dialog`` of the instruction's dialog with the transcript), and the audio prompt
  is the same sequence with the audio where the transcript's tokens were.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from align_fixtures import UTTERANCES, align_config, make_world
from audiochat_jax.models import speech_llm
from audiochat_jax.models.llama import LlamaConfig
from audiochat_jax.text.chat_template import encode_dialog
from audiochat_jax.text.instructions import Instruction
from audiochat_jax.train import align

POOL = [Instruction("respond"), Instruction("repeat", "repeat: {content}"),
        Instruction("history", "{content}", (("user", "red"), ("assistant", "blue dog"))),
        Instruction("translate", "translate to french: {content}")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = make_world(tmp_path_factory.mktemp("align_targets"))
    # One record per (utterance, family); the response encodes which (utterance k, family f).
    path = os.path.join(w["root"], "pool_responses.jsonl")
    with open(path, "w") as f:
        for k, (uid, _, text, _) in enumerate(UTTERANCES):
            for fam, instr in enumerate(POOL):
                prefix, suffix = instr.parts(w["tok"])
                f.write(json.dumps({"id": uid, "family": instr.family, "prefix_ids": prefix,
                                    "suffix_ids": suffix, "response_ids": [10 + k, 20 + fam, w["tok"].eos_id]})
                        + "\n")
    w["pool_responses"] = path
    return w


def test_heldout_families_never_reach_the_align_targets(world):
    config = align_config(world, f"--config.align.responses={world['pool_responses']}",
                          "--config.align.heldout_families=translate", "--config.total_steps=5")
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=jax.devices()[:1])
    task = align.align_task(config, mesh)
    data = task.train_data()
    seen = set()
    for _ in range(12):  # 4 train utterances, batch 4: 12 epochs, one draw per utterance each
        b = next(data)
        for r in np.flatnonzero(b["valid"]):
            fam = int(b["response_ids"][r, 1]) - 20
            seen.add(POOL[fam].family)
            assert data.families[b["family"][r]] == POOL[fam].family
    assert seen == {"respond", "repeat", "history"}
    table, counts = align.select_targets(align._load_response_tables(world["pool_responses"]), [], [],
                                         heldout=("translate",))
    assert counts["translate (dropped)"] == len(UTTERANCES)
    assert all(t.family != "translate" for ts in table.values() for t in ts)
    only, _ = align.select_targets(align._load_response_tables(world["pool_responses"]), [], [],
                                   families=("repeat",))
    assert {t.family for ts in only.values() for t in ts} == {"repeat"}
    with pytest.raises(ValueError, match=r"\['sing'\] not among"):
        align.select_targets(table, [], [], families=("sing",))


def test_text_and_audio_prompts_differ_only_in_the_content_span(world):
    config = align_config(world, f"--config.align.responses={world['pool_responses']}",
                          "--config.total_steps=5")
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=jax.devices()[:1])
    task = align.align_task(config, mesh)
    llm_cfg = LlamaConfig.from_dict(json.load(open(os.path.join(world["llm"], "config.json")))["config"])
    tok, params = world["tok"], world["llm_params"]
    texts = {u[0]: u[2] for u in UTTERANCES}
    data = task.train_data()
    for _ in range(6):
        b = next(data)
        around = dict(prefix_lengths=b["prefix_lengths"], suffix_lengths=b["suffix_lengths"])
        text = speech_llm.build_prompt(llm_cfg, params, b["prefix_ids"], b["suffix_ids"], b["labels"],
                                       b["label_lengths"], **around)
        fake_audio = np.full((4, 7, llm_cfg.dim), 0.5, np.float32)
        audio = speech_llm.build_prompt(llm_cfg, params, b["prefix_ids"], b["suffix_ids"], fake_audio,
                                        np.full((4,), 7, np.int32), **around)
        for r in range(4):
            instr = POOL[int(b["response_ids"][r, 1]) - 20]
            want = encode_dialog(tok, instr.messages(texts[b["ids"][r]])).ids
            n = int(text.lengths[r])
            assert n == len(want)
            np.testing.assert_array_equal(np.asarray(text.embeddings[r, :n]),
                                          np.asarray(speech_llm.embed_tokens(llm_cfg, params, np.array(want))))
            # the audio row: the same tokens before and after, the audio in between
            p, s, m = int(b["prefix_lengths"][r]), int(b["suffix_lengths"][r]), int(audio.lengths[r])
            got = np.asarray(audio.embeddings[r])
            np.testing.assert_array_equal(got[:p], np.asarray(text.embeddings[r, :p]))
            np.testing.assert_array_equal(got[p:p + 7], fake_audio[r])
            np.testing.assert_array_equal(got[p + 7:m], np.asarray(text.embeddings[r, n - s:n]))
            assert m == p + 7 + s
