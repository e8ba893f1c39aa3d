"""The evaluation end to end on a tiny random speech LLM: QA filtering, sweeps, report files.

A random LLM answers no mini-world question, so the QA logic is checked with items whose
"gold answer" is what the text path itself replied (EchoItem): then the kept set is known,
and a cascade fed the gold transcript must score exactly 1.0 (same prompt as the text path).
"""
import json
import os

import numpy as np
import pytest

from eval_fixtures import make_speech_llm, make_world
from audiochat_jax import evaluate
from audiochat_jax.data.mini_world import MiniWorld
from audiochat_jax.eval import qa, render, translation
from audiochat_jax.eval.config import default_eval_config
from audiochat_jax.inference.prompting import Prompter, content_parts
from audiochat_jax.inference.speech_model import SpeechModel

WORLD = dict(seed=0, n_entities=8, heldout_fraction=0.25, reply_style="restate", system_prompt="",
             n_asr_train=48, n_asr_test=8, n_lm_dialogs=400, n_eval=8)
SYNTH = dict(seed=0, accents=["en-us", "en-gb"], variants=["m1", "f1"], unseen_accents=["en-us"],
             unseen_variants=["m3"])


class EchoItem:
    """A QA item whose correct reply is ``expected`` (exact match)."""

    def __init__(self, question, expected, followup="and plus one"):
        self.question, self.expected, self.followup = question, expected, followup
        self.first_answer = "seven"

    def is_correct(self, reply):
        return reply == self.expected


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_report")
    world = MiniWorld(**WORLD)
    w = make_world(root, corpus=world.tokenizer_corpus()[:200] + world.eval_sentences(), max_seq_len=256,
                   vocab_size=400)
    aligned = make_speech_llm(w)
    model = SpeechModel.load(aligned, batch_rows=4, bucket_samples=16000)
    return {"root": str(root), "world": w, "aligned": aligned, "model": model, "mini": world}


def test_qa_keeps_what_the_text_path_answers_and_scores_paths_on_those(setup):
    model, tok = setup["model"], setup["model"].tokenizer
    p = Prompter(model, batch_size=4, max_new_tokens=8)
    questions = [q.question for q in setup["mini"].qa_items("heldout")][:6]
    text = [tok.encode(q) for q in questions]
    prefix, suffix = content_parts(tok, [{"role": "user", "content": "x"}], 0)
    replies = p.decode(p.generate([[prefix, t, suffix] for t in text]))
    items = [EchoItem(q, r if i % 2 == 0 else "never said") for i, (q, r) in enumerate(zip(questions, replies))]
    waves, _ = render.render(questions, SYNTH, cache_dir=os.path.join(setup["root"], "cache"))
    emb, lens = model.embed_audio(waves)
    asked = []
    paths = {"gold": lambda idx: (asked.append(list(idx)), [text[i] for i in idx])[1],
             "audio": lambda idx: [emb[i, :lens[i]] for i in idx]}
    out = qa.spoken_qa(p, items, text, paths)
    assert out["kept"] == [0, 2, 4] and asked == [[0, 2, 4]]
    assert out["text_accuracy"] == pytest.approx(0.5)
    assert out["accuracy"]["gold"] == 1.0
    audio_ok = [items[i].is_correct(r) for i, r in zip([0, 2, 4], p.decode(p.generate(
        [[prefix, emb[i, :lens[i]], suffix] for i in [0, 2, 4]])))]
    assert out["accuracy"]["audio"] == pytest.approx(np.mean(audio_ok))


def test_evaluate_writes_markdown_json_and_plots(setup, capsys):
    c = default_eval_config(WORLD, SYNTH, smoke=True)
    out_dir = os.path.join(setup["root"], "out")
    c.update(aligned_dir=setup["aligned"], ctc_dir=setup["world"]["encoder"], out_dir=out_dir,
             work_dir=os.path.join(setup["root"], "cache"), workers=1, pocketsphinx=False, n_qa=4,
             n_qa_train=2, n_multiturn=2, n_translation=2, batch_size=4, max_new_tokens=8,
             sweeps=(),  # the sweeps have their own test below
             long_items=2, long_statements=2)  # the long-recording section, wired in
    summary = evaluate.run(c)
    with open(summary["results"]) as f:
        results = json.load(f)
    for name in ("qa", "translation"):
        ppl = results["perplexity"][name]
        assert set(ppl) == {"text", "audio", "cascade:ctc"}
        assert all(np.isfinite(v["ppl"]) and v["ppl"] > 1 for v in ppl.values())
    tr = results["translation"]
    assert set(tr["bleu"]) == set(tr["replies"]) == {"text", "audio", "cascade:ctc"}
    for path, replies in tr["replies"].items():   # every reply is kept, and BLEU is theirs
        refs = [r for r, _ in tr["examples"][path]]
        assert len(refs) == len(replies) == tr["n_items"] == 2
        assert [h for _, h in tr["examples"][path]] == replies
        assert translation.bleu(replies, refs) == pytest.approx(tr["bleu"][path])
    assert results["asr"]["ctc"]["n"] > 0 and results["qa"]["n_items"] == 4
    # Training questions (spoken in the alignment corpus) beside the held-out ones, every path.
    assert results["qa_train"]["n_items"] == 2
    assert set(results["qa_train"]["accuracy"]) == set(results["qa"]["accuracy"])
    md = open(summary["report"]).read()
    assert results["long_audio"]["n_items"] == 2 and set(results["long_audio"]["accuracy"]) == {
        "closed_book", "text", "audio"}
    for heading in ("## Perplexity", "## Spoken QA", "Training vs held-out questions", "## Multi-turn", "## Speech translation", "perplexity.png",
                    "## Long recordings"):
        assert heading in md
    for png in summary["plots"]:
        with open(png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_sweeps_measure_every_condition_on_the_kept_items(setup):
    model = setup["model"]
    c = default_eval_config(WORLD, SYNTH, smoke=True)
    c.update(snr_db=(10.0,), rates=(150,), length_bins=2, sweeps=("snr", "voices", "rate", "length"))
    questions = [q.question for q in setup["mini"].qa_items("heldout")][:3]
    items = [EchoItem(q, "x") for q in questions]
    cache = os.path.join(setup["root"], "cache")
    speak = lambda texts, voices="unseen", rate=None: render.render(texts, SYNTH, voices=voices, rate=rate,  # noqa: E731
                                                                   cache_dir=cache)
    waves, meta = speak(questions)
    p = Prompter(model, batch_size=4, max_new_tokens=4)
    out = evaluate._sweeps(c, p, model, items, waves, meta, {"kept": [0, 1, 2], "n_kept": 3}, {}, speak, None, print)
    assert list(out["snr"]) == ["clean", "10 dB"]
    assert list(out["voices"]) == ["unseen", "seen"] and list(out["rate"]) == ["150 wpm"]
    assert sum(v["n"] for v in out["length"].values()) == 3
    assert all(v["audio"] == 0.0 and v["n"] for sweep in out.values() for v in sweep.values())


def test_evaluate_names_a_missing_path():
    c = default_eval_config(WORLD, SYNTH, smoke=True)
    c.out_dir = "/tmp/x"
    with pytest.raises(ValueError, match="aligned_dir"):
        evaluate.run(c)
