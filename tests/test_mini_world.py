"""The mini world's text: deterministic, leak-free, CTC-clean, consistent, translatable."""
import os
import re
import subprocess
import sys

import pytest

from audiochat_jax.data import mini_lexicon as lex
from audiochat_jax.data import mini_world as mw
from audiochat_jax.data.mini_lexicon import LEXICON, OPS, normalize_transcript, number_words, parse_numbers
from audiochat_jax.data.mini_world import MiniWorld, answer_in_reply

SMALL = dict(n_lm_dialogs=3000)


@pytest.fixture(scope="module")
def world():
    return MiniWorld(seed=0, **SMALL)


@pytest.fixture(scope="module")
def short_world():
    return MiniWorld(seed=0, reply_style="short", **SMALL)


def _train_user_texts(w):
    """Every user turn the LM trains on, instruction prefixes removed."""
    out = []
    for d in w.lm_dialogs():
        for m in d.messages[0::2]:
            out.append(m["content"].split(": ", 1)[-1])
    return out


def _train_text(w):
    """All training text (LM dialogs, both roles, and ASR/alignment sentences), normalised,
    one line each, padded with spaces for whole-word search."""
    lines = [m["content"] for d in w.lm_dialogs() for m in d.messages] + w.asr_sentences("train")
    return "\n".join(f" {normalize_transcript(x)} " for x in lines)


_DIGEST = """
import hashlib, json, sys
from audiochat_jax.data.mini_world import MiniWorld
w = MiniWorld(seed=int(sys.argv[1]), n_lm_dialogs=500)
blob = json.dumps([w.asr_sentences("train"), w.asr_sentences("test"),
                   [[d.task, list(d.messages)] for d in w.lm_dialogs()],
                   [vars(q) for q in w.qa_items("heldout")], [vars(t) for t in w.translation_items()],
                   [vars(m) for m in w.multiturn_items()], w.eval_sentences()])
print(hashlib.sha256(blob.encode()).hexdigest())
"""


def test_same_seed_gives_the_same_world_in_any_process():
    def digest(seed, hashseed):
        env = {**os.environ, "PYTHONHASHSEED": str(hashseed)}
        return subprocess.run([sys.executable, "-c", _DIGEST, str(seed)], env=env, check=True,
                              capture_output=True, text=True).stdout.strip()
    a = digest(0, 1)
    assert a == digest(0, 2)  # str hashing (set order) must not leak into the output
    assert a != digest(1, 1)


def test_heldout_questions_never_appear_in_speech_training_text(world):
    lm_text, asr = _train_text(world), world.asr_sentences("train")
    asr_text = "\n".join(f" {x} " for x in asr)
    assert len(world.fact_questions["heldout"]) >= 60 and len(world.arith_questions["heldout"]) > 300
    # Held-out fact questions: in no training text at all (LM dialogs or ASR sentences).
    leaked = [q for q in world.fact_questions["heldout"] if f" {q} " in lm_text]
    assert not leaked, leaked[:5]
    # Held-out arithmetic: no combination is spoken in the ASR/alignment sentences, in any
    # wording ("a op b") ...
    found = set()
    for line in asr:
        words = line.split()
        nums = parse_numbers(words)
        for (s1, e1, a), (s2, e2, b) in zip(nums, nums[1:]):
            if s2 == e1 + 1 and words[e1] in OPS:
                found.add(lex.arith_key(a, words[e1], b))
    assert len(found) > 300  # the scan does see the training arithmetic
    assert not found & world.heldout_arith
    # ... while the LM is asked them (it knows its sums, as Llama-2 does): many held-out
    # arithmetic questions' combinations are asked in its dialogs.
    asked = set()
    for d in world.lm_dialogs():
        if d.task == "arithmetic":
            words = d.messages[0]["content"].split()
            (s1, e1, a), (s2, e2, b) = parse_numbers(words)[:2]
            asked.add(lex.arith_key(a, words[e1], b))
    assert len(asked & world.heldout_arith) > 0.3 * len(world.heldout_arith)
    # Every eval item's utterance is unheard by the speech system (and held-out facts by the LM).
    for q in world.qa_items("heldout"):
        assert f" {q.question} " not in asr_text
        if q.kind == "fact":
            assert f" {q.question} " not in lm_text
    for m in world.multiturn_items():
        assert f" {m.question} " not in asr_text


def test_heldout_translations_and_asr_test_sentences_are_unseen(world):
    user = set(_train_user_texts(world)) | set(world.asr_sentences("train"))
    replies = {m["content"] for d in world.lm_dialogs() for m in d.messages[1::2]}
    for t in world.translation_items():
        assert t.en not in user and t.fr not in replies
    assert not set(world.asr_sentences("test")) & user
    assert len(world.asr_sentences("test")) == 600


def test_sentences_are_many_distinct_normalised_transcripts(world):
    train = world.asr_sentences("train")
    assert len(train) == len(set(train)) == 6000
    kinds = {"question": 0, "statement": 0, "command": 0}
    for s in train + world.asr_sentences("test") + world.eval_sentences() + _train_user_texts(world):
        assert normalize_transcript(s) == s, s
        assert set(s) <= set(lex.TRANSCRIPT_ALPHABET)
    for s in train:
        kinds["command" if s.startswith("please") else
              "question" if s.split()[0] in ("what", "where", "which", "why", "how", "in", "can")
              else "statement"] += 1
    assert min(kinds.values()) > 700, kinds
    # A small language: a few hundred word types, English and French together.
    words = {w for d in world.lm_dialogs() for m in d.messages
             for w in re.findall(r"[a-zàâçéèêëîïôûùüÿœ']+", m["content"])}
    assert 150 < len(words) < 500


def test_normalize_transcript():
    assert normalize_transcript("Alice's 12 cats — l'élève, \u2019quoted\u2019!") == \
        "alice's twelve cats l'eleve quoted"
    assert normalize_transcript("  Twenty-One?  ") == "twenty one"
    assert [number_words(n) for n in (0, 13, 40, 99, 100, 215)] == [
        "zero", "thirteen", "forty", "ninety nine", "one hundred", "two hundred fifteen"]
    for n in range(0, 1000, 7):
        assert parse_numbers(number_words(n).split()) == [(0, len(number_words(n).split()), n)]


def test_answers_agree_with_arithmetic_and_the_entity_table(world, short_world):
    items = world.qa_items("heldout") + world.qa_items("train")
    assert len(items) == 400
    for q in items:
        words = q.question.split()
        if q.kind == "arithmetic":
            (s1, e1, a), (s2, e2, b) = parse_numbers(words)[:2]
            assert parse_numbers(q.answer.split())[0][2] == OPS[words[e1]](a, b)
        else:
            person = next(e for e in world.entities if e.name in q.question.replace("'s", " ").split())
            assert q.answer == person.facts[q.answer_type]
        for w in (world, short_world):  # the world's own reply is right in both styles
            assert q.is_correct(w.reply(q.question)), (q, w.reply(q.question))
    for m in world.multiturn_items():
        assert answer_in_reply(world.reply(m.question), m.first_answer,
                               "number" if m.answer_type == "number" else
                               world._qa[m.question].answer_type)
        if m.answer_type == "number":
            op, c = m.followup.split()[-2], parse_numbers(m.followup.split())[-1][2]
            assert parse_numbers(m.answer.split())[0][2] == OPS[op](
                parse_numbers(m.first_answer.split())[0][2], c)
    # Statements are judged by the table: "yes" exactly when true, with the true fact.
    for d in world.lm_dialogs():
        if d.task == "statement":
            said, reply = d.messages[0]["content"], d.messages[1]["content"]
            person = next(e for e in world.entities if said.startswith(e.name))
            true = any(said == f.format(n=person.name, v=person.facts[a])
                       for a in lex.ATTRIBUTES for f in lex.ATTRIBUTES[a][3])
            assert reply.startswith("yes," if true else "no,"), (said, reply)


def test_answer_checker_reads_the_final_answer():
    assert answer_in_reply("seven minus zero is seven.", "seven", "number")
    assert not answer_in_reply("seven minus zero is nine.", "seven", "number")
    assert answer_in_reply("twenty one.", "twenty one", "number")
    assert not answer_in_reply("twenty plus one is twenty one.", "one", "number")
    assert answer_in_reply("alice's car is red.", "red", "car")
    assert not answer_in_reply("alice's car is blue.", "red", "car")
    assert not answer_in_reply("i do not know.", "red", "car")
    with pytest.raises(ValueError, match="answer_type"):
        answer_in_reply("x", "y", "colour_of_sky")


def test_lexicon_covers_every_translation_template_word(world):
    names = {e.name for e in world.entities}
    assert len(world.french) > 5000
    for en in world.french:
        rest = en.replace("in front of", "")
        missing = [w for w in rest.split() if w not in LEXICON and w not in names]
        assert not missing, (en, missing)
    # Hand-checked French (gender agreement, adjective order, elision).
    f = {**world.french}
    expect = {"the small red dog sleeps under the table": "le petit chien rouge dort sous la table",
              "the big white mouse hides in front of the tree":
                  "la grande souris blanche se cache devant l'arbre",
              "the bird is big": "l'oiseau est grand", "the box is green": "la boîte est verte",
              "i see the small cup": "je vois la petite tasse"}
    for en, fr in expect.items():
        assert lex.translation_template(*_parse_template(en)) == (en, fr)
    assert all(t.fr == f[t.en] for t in world.translation_items())


def _parse_template(en):
    w = en.split()
    if w[0] == "i":
        return "see", ((w[3] if len(w) == 5 else None), w[-1])
    if w[-2] == "is":
        return "is_adj", (w[1], w[-1])
    prep = next(p for p in lex.PREPS if f" {p} the " in en)
    head, place = en.split(f" {prep} the ")
    h = head.split()[1:]
    size = h.pop(0) if h[0] in lex.SIZES else None
    colour = h.pop(0) if h[0] in lex.COLOURS else None
    return "scene", (size, colour, h[0], h[1], prep, place)


def test_restated_replies_carry_the_content_short_ones_do_not(world, short_world):
    assert world.asr_sentences("train") == short_world.asr_sentences("train")
    restate = [world.reply(s) for s in world.asr_sentences("train")]
    short = [short_world.reply(s) for s in world.asr_sentences("train")]
    mean = lambda xs: sum(len(x.split()) for x in xs) / len(xs)  # noqa: E731
    assert 5 < mean(restate) < 20 and mean(short) < 2, (mean(restate), mean(short))
    # A restated reply contains every content word of the utterance (pronouns swapped).
    skip = {"please", "what", "where", "which", "why", "how", "does", "do", "can", "you", "tell",
            "me", "is", "my", "of", "the", "in", "a", "have", "kind", "own", "keep", "live",
            "city", "colour", "job", "pet", "fruit", "animal", "like", "best", "eat", "to",
            "for", "living", "car", "home", "much", "loves", "works", "as", "lives", "likes", "has"}
    names = {e.name for e in world.entities}
    for s, r in zip(world.asr_sentences("train"), restate):
        content = [w for w in s.replace("'s", "").split() if w not in skip]
        if any(w in names for w in content):  # facts: the person is restated
            content = [w for w in content if w in names]
        rw = set(normalize_transcript(r).replace("'s", "").split())
        assert set(content) <= rw, (s, r)


def test_sentencepiece_on_the_corpus_gives_short_replies(world, tmp_path):
    from audiochat_jax.text.chat_template import encode_dialog
    from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece
    tok = Tokenizer(train_sentencepiece(world.tokenizer_corpus(), tmp_path / "mini",
                                        vocab_size=mw.MINI_VOCAB_SIZE))
    lengths, reply_lengths = [], []
    for d in world.lm_dialogs()[:500]:
        dt = encode_dialog(tok, d.messages, d.system)
        assert tok.unk_id not in dt.ids
        lengths.append(len(dt.ids))
        reply_lengths += [e - s for s, e in dt.assistant_spans]
    reply_mean = sum(reply_lengths) / len(reply_lengths)
    assert 6 < reply_mean < 20 and max(lengths) <= 128, (reply_mean, max(lengths))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="reply_style='terse'"):
        MiniWorld(reply_style="terse")
    with pytest.raises(ValueError, match="n_entities=99"):
        MiniWorld(n_entities=99)
    w = MiniWorld(seed=3, n_lm_dialogs=10)
    with pytest.raises(KeyError, match="not a sentence of this mini world"):
        w.reply("hello there")
    with pytest.raises(ValueError, match="split='dev'"):
        w.asr_sentences("dev")
