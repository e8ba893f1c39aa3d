"""The mini world's text: entities, a templated instruction corpus and its eval items.

Everything is a pure function of ``seed`` (``random.Random`` seeded with strings, lists
sorted before sampling, so ``PYTHONHASHSEED`` never matters). Nothing here loads a model.

What it holds:
- **Entities**: people with a car colour, a home city, a pet, a job and a favourite fruit.
- **Sentences** (all already normalised transcripts: lowercase letters, apostrophes, spaces;
  numbers spelled out, "seven plus twelve"): fact and arithmetic questions, true/false fact
  statements, scene descriptions, commands and open questions. Many thousands are distinct,
  so an encoder aligned on them cannot pass by memorising a few answers.
- **LM dialogs** (Llama-2 chat messages) teaching the mini LM to answer, repeat, rephrase,
  summarise, translate EN->FR and follow up on an earlier answer.
- **Eval items** held out from the speech (ASR/alignment) training text: spoken QA,
  translation, multi-turn; held-out facts and translations from the LM's text too.

Replies and ``reply_style``. With bare answers as replies (2.7 tokens, "nineteen"), aligned
audio memorised training questions (100%) but failed held-out ones (33%): such a target
says almost nothing about the utterance. With
``reply_style="restate"`` (default) every reply carries the utterance's content, like a real
chat LLM: questions are restated then answered ("seven plus twelve is nineteen."),
statements echoed or corrected, commands acknowledged by restating them. ``"short"`` gives
the bare-answer control ("nineteen.", "ok."). Translation, repetition, rephrasing and
summaries are the same in both styles (their output already carries the content).

Held-out split: a fraction of (person, attribute) pairs and of arithmetic combinations are
never spoken in the ASR/alignment sentences, in any wording, so held-out spoken QA asks
questions the speech system has never heard. For the LM the two differ, as they do for
Llama-2: held-out *facts* are never asked in its training text either (they are taught through
statements and summaries: the LM must answer a new question about a known fact), while
*arithmetic* is asked in full (a real chat LLM knows its sums before it hears any speech; a
1M-parameter LM taught held-out sums only through true/false statements answered 19% of them
after 1000 steps: it does not learn to add in minutes, it recalls).
"""
from __future__ import annotations

import dataclasses
import itertools
import random
from typing import Mapping

from audiochat_jax.data.mini_lexicon import (
    REPLY_STYLES, TRANSLATE_INSTRUCTION, number_words, parse_numbers, normalize_transcript, NAMES,
    ATTRIBUTES, ANSWER_VALUES, OPS, ARITH_QUESTIONS, arith_key, NOUNS,
    PLACES, COLOURS, SIZES, VERBS, ANIMALS, OBJECT_VERBS,
    PREPS, noun_phrase, translation_template, OPTIONAL)


# ----------------------------------------------------------------------------- data types
@dataclasses.dataclass(frozen=True)
class Entity:
    name: str
    facts: Mapping[str, str]  # attribute -> value


@dataclasses.dataclass(frozen=True)
class Dialog:
    """One LM training example: ``encode_dialog(tok, messages, system)``."""
    task: str
    messages: tuple  # ({"role": "user"|"assistant", "content": str}, ...)
    system: str | None = None


@dataclasses.dataclass(frozen=True)
class QAItem:
    question: str       # a normalised transcript (what is spoken)
    answer: str         # gold answer phrase
    answer_type: str    # "number" or an ATTRIBUTES key
    kind: str           # "arithmetic" | "fact"

    def is_correct(self, reply: str) -> bool:
        return answer_in_reply(reply, self.answer, self.answer_type)


@dataclasses.dataclass(frozen=True)
class TranslationItem:
    en: str  # spoken English (normalised transcript)
    fr: str  # French reference


@dataclasses.dataclass(frozen=True)
class MultiTurnItem:
    question: str      # first turn, spoken
    first_answer: str  # its gold answer
    followup: str      # second turn, typed text; needs the first turn
    answer: str        # gold answer of the follow-up
    answer_type: str

    def is_correct(self, reply: str) -> bool:
        return answer_in_reply(reply, self.answer, self.answer_type)


def answer_in_reply(reply: str, answer: str, answer_type: str) -> bool:
    """Whether the reply's final answer is ``answer``.

    Both reply styles put the answer last ("seven minus zero is seven." / "seven."), and a
    restated question can itself contain the answer word ("*seven* minus zero"), so we take
    the LAST value of the answer's type in the reply (the last whole spelled-out number, or
    the last colour/city/... word) and compare it with the gold answer."""
    words = normalize_transcript(reply).split()
    if answer_type == "number":
        found = parse_numbers(words)
        gold = parse_numbers(normalize_transcript(answer).split())
        return bool(found) and len(gold) == 1 and found[-1][2] == gold[0][2]
    if answer_type not in ANSWER_VALUES:
        raise ValueError(f"unknown answer_type {answer_type!r}; use 'number' or one of "
                         f"{sorted(ANSWER_VALUES)}")
    found = [w for w in words if w in ANSWER_VALUES[answer_type]]
    return bool(found) and found[-1] == normalize_transcript(answer)


# ----------------------------------------------------------------------------- the world
# Share of each sentence kind in the ASR/alignment training set (fact questions and
# statements are capped by how many distinct ones exist; descriptions fill any gap).
# Names and attributes need enough speech for a 2M-parameter CTC model to spell them: with
# 5% + 8% of 3000 utterances each name was heard ~10 times, and held-out fact questions came
# out as "what cein of pet dlus ouooen" (CTC WER 0.69 on them vs 0.23 on the test split).
ASR_MIX = {"fact_question": 0.09, "fact_statement": 0.15, "arith_question": 0.25,
           "description": 0.24, "command": 0.15, "open_question": 0.12}
# sentencepiece vocabulary for the mini LM: 3 specials + 256 bytes + pieces enough to hold
# every word of the world whole (replies then average ~10 tokens).
MINI_VOCAB_SIZE = 768
# Distinct scene descriptions drawn from the ~50k the grammar allows (enough for every split).
N_DESCRIPTIONS = 12000
# Share of each task among the LM training dialogs.
LM_TASKS = {"fact_qa": 0.14, "arithmetic": 0.18, "statement": 0.08, "arith_statement": 0.06,
            "profile": 0.05, "respond": 0.17, "repeat": 0.06, "rephrase": 0.06, "translate": 0.15,
            "multi_turn": 0.15}
_SWAP = {"me": "you", "my": "your"}
_PREDICATE = {"car": "has a {v} car", "city": "lives in {v}", "pet": "has a {v}",
              "job": "works as a {v}", "fruit": "likes {v}"}


class MiniWorld:
    """The mini world, generated from ``seed``.

    Args:
      seed: everything below is a function of it.
      n_entities: people (at most len(NAMES)).
      heldout_fraction: share of (person, attribute) pairs and of arithmetic combinations
        never spoken in the ASR/alignment text (held-out facts: never asked in LM text either).
      reply_style: "restate" (replies carry the utterance's content) or "short".
      system_prompt: system prompt of every dialog (None: no system block).
      n_asr_train, n_asr_test: distinct ASR sentences for training / ASR testing.
      n_lm_dialogs: LM training dialogs.
      n_eval: items per eval family (QA, translation, multi-turn).
    """

    def __init__(self, seed: int = 0, n_entities: int = 24, heldout_fraction: float = 0.25,
                 reply_style: str = "restate", system_prompt: str | None = None,
                 n_asr_train: int = 6000, n_asr_test: int = 600, n_lm_dialogs: int = 12000,
                 n_eval: int = 200):
        if reply_style not in REPLY_STYLES:
            raise ValueError(f"reply_style={reply_style!r}: use one of {REPLY_STYLES}.")
        if not 1 <= n_entities <= len(NAMES):
            raise ValueError(f"n_entities={n_entities}: use 1..{len(NAMES)} (names in NAMES).")
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction={heldout_fraction}: use a value in (0, 1).")
        self.seed, self.reply_style, self.system_prompt = seed, reply_style, system_prompt
        self.n_lm_dialogs, self.n_eval = n_lm_dialogs, n_eval
        rng = random.Random(f"mini-world/{seed}/entities")
        names = sorted(rng.sample(NAMES, n_entities))
        self.entities = tuple(Entity(n, {a: rng.choice(v[0]) for a, v in ATTRIBUTES.items()})
                              for n in names)
        self.facts = {(e.name, a): v for e in self.entities for a, v in e.facts.items()}
        # Held-out pairs: at most two attributes per person, so every person keeps questions.
        pairs = sorted(self.facts)
        rng.shuffle(pairs)
        want, per_name, self.heldout_pairs = round(heldout_fraction * len(pairs)), {}, set()
        for n, a in pairs:
            if len(self.heldout_pairs) < want and per_name.get(n, 0) < 2:
                self.heldout_pairs.add((n, a))
                per_name[n] = per_name.get(n, 0) + 1
        keys = sorted({arith_key(a, op, b) for op, a, b in self._arith_combos()})
        rng.shuffle(keys)
        self.heldout_arith = set(keys[:round(heldout_fraction * len(keys))])
        self._replies: dict[str, str] = {}
        self._qa: dict[str, QAItem] = {}
        self._about: dict[str, str] = {}  # fact question -> the person it asks about
        self._build(n_asr_train, n_asr_test)

    # -- sentence generators: each returns [(text, restate_reply, short_reply)] ----------------
    @staticmethod
    def _arith_combos():
        return ([("plus", a, b) for a in range(21) for b in range(21)]
                + [("minus", a, b) for a in range(21) for b in range(a + 1)]
                + [("times", a, b) for a in range(11) for b in range(11)])

    def _say(self, text, restate, short, qa=None):
        self._replies[text] = restate if self.reply_style == "restate" else short
        if qa is not None:
            self._qa[text] = qa
        return text

    def _fact(self, n, a):
        return ATTRIBUTES[a][2].format(n=n, v=self.facts[(n, a)])

    def _build(self, n_asr_train, n_asr_test):
        rng = random.Random(f"mini-world/{self.seed}/sentences")
        pools = {k: [] for k in ASR_MIX}
        self.fact_questions = {"train": [], "heldout": []}
        for (n, a), v in sorted(self.facts.items()):
            split = "heldout" if (n, a) in self.heldout_pairs else "train"
            for q in ATTRIBUTES[a][1]:
                t = self._say(q.format(n=n), self._fact(n, a) + ".", v + ".",
                              QAItem(q.format(n=n), v, a, "fact"))
                self._about[t] = n
                self.fact_questions[split].append(t)
            for form in ATTRIBUTES[a][3]:  # true and false statements (facts are taught here)
                pools["fact_statement"].append(self._say(form.format(n=n, v=v),
                                                         f"yes, {self._fact(n, a)}.", "yes."))
                for w in rng.sample([x for x in ATTRIBUTES[a][0] if x != v], 2):
                    pools["fact_statement"].append(self._say(form.format(n=n, v=w),
                                                             f"no, {self._fact(n, a)}.", "no."))
        pools["fact_question"] = self.fact_questions["train"]
        self.arith_questions = {"train": [], "heldout": []}
        for op, a, b in self._arith_combos():
            e, r = f"{number_words(a)} {op} {number_words(b)}", number_words(OPS[op](a, b))
            split = "heldout" if arith_key(a, op, b) in self.heldout_arith else "train"
            for q in ARITH_QUESTIONS:
                self.arith_questions[split].append(self._say(
                    q.format(e=e), f"{e} is {r}.", f"{r}.",
                    QAItem(q.format(e=e), r, "number", "arithmetic")))
        pools["arith_question"] = self.arith_questions["train"]
        # True and false statements of every combination, confirmed or corrected in LM
        # dialogs (the LM's "respond to a statement" behaviour; never spoken in ASR text).
        srng = random.Random(f"mini-world/{self.seed}/arith-statements")
        self.arith_statements = []
        for op, a, b in self._arith_combos():
            e, r = f"{number_words(a)} {op} {number_words(b)}", OPS[op](a, b)
            wrong = r + srng.choice((-1, 1)) if r else 1
            self.arith_statements.append(self._say(f"{e} is {number_words(r)}",
                                                   f"yes, {e} is {number_words(r)}.", "yes."))
            self.arith_statements.append(self._say(f"{e} is {number_words(wrong)}",
                                                   f"no, {e} is {number_words(r)}.", "no."))
        # Scene sentences: descriptions (also translated), commands, open questions.
        self.french = {}
        scenes = [(sz, c, n, v, p, pl) for sz, c, n in itertools.product(
            OPTIONAL(SIZES), OPTIONAL(COLOURS), sorted(NOUNS)) for v in sorted(VERBS)
            if (v in OBJECT_VERBS) != (n in ANIMALS) for p in sorted(PREPS) for pl in sorted(PLACES)]
        for item in rng.sample(scenes, min(len(scenes), N_DESCRIPTIONS)):
            en, fr = translation_template("scene", item)
            self.french[en] = fr
            pools["description"].append(self._say(en, f"ok, {en}.", "ok."))
        templates = [("is_adj", itertools.product(sorted(NOUNS), sorted(COLOURS) + sorted(SIZES))),
                     ("has", itertools.product([e.name for e in self.entities], sorted(COLOURS),
                                               sorted(NOUNS))),
                     ("see", itertools.product(OPTIONAL(SIZES), sorted(NOUNS)))]
        other_translations = []
        for kind, items in templates:
            for item in items:
                en, fr = translation_template(kind, item)
                self.french[en] = fr
                other_translations.append(en)
        things = [noun_phrase(n, s, c)[0] for s, c, n in itertools.product(OPTIONAL(SIZES), OPTIONAL(COLOURS),
                                                                  sorted(NOUNS))]
        for p, pl in itertools.product(sorted(PREPS), sorted(PLACES)):
            for c in sorted(COLOURS):
                t = f"please put the {c} cup {p} the {pl}"
                pools["command"].append(self._say(t, f"ok, i will put the {c} cup {p} the {pl}.",
                                                  "ok."))
            pools["open_question"].append(self._say(
                f"what is {p} the {pl}", f"you asked what is {p} the {pl}. i do not know.",
                "i do not know."))
        for th in things:
            for verb in ("bring me", "find", "show me", "clean", "hide"):
                t = f"please {verb} the {th}"
                said = " ".join(_SWAP.get(w, w) for w in f"{verb} the {th}".split())
                pools["command"].append(self._say(t, f"ok, i will {said}.", "ok."))
            pools["open_question"].append(self._say(
                f"where is the {th}", f"you asked where the {th} is. i do not know.",
                "i do not know."))
            for p, pl in itertools.product(sorted(PREPS), sorted(PLACES)):
                pools["open_question"].append(self._say(
                    f"why is the {th} {p} the {pl}",
                    f"you asked why the {th} is {p} the {pl}. i do not know.", "i do not know."))
        # Split: eval translations and ASR test sentences are drawn first and never trained on.
        for k in pools:
            pools[k] = sorted(set(pools[k]))
            rng.shuffle(pools[k])
        rng.shuffle(other_translations)
        half = self.n_eval // 2
        self.translation_eval = ([TranslationItem(t, self.french[t])
                                  for t in pools["description"][:half]]
                                 + [TranslationItem(t, self.french[t])
                                    for t in other_translations[:self.n_eval - half]])
        pools["description"] = pools["description"][half:]
        self._train_translations = other_translations[self.n_eval - half:]
        test_kinds = ("description", "command", "open_question")
        self._asr = {"test": []}
        for i, k in enumerate(test_kinds):
            m = n_asr_test // len(test_kinds) + (i < n_asr_test % len(test_kinds))
            self._asr["test"] += pools[k][:m]
            pools[k] = pools[k][m:]
        train = []
        for k, share in ASR_MIX.items():
            train += pools[k][:round(share * n_asr_train)]
        taken = set(train)
        extra = [t for t in pools["description"] if t not in taken]
        train += extra[:max(0, n_asr_train - len(train))]
        self._asr["train"] = sorted(train)
        self._asr["test"] = sorted(self._asr["test"])
        self._pools = pools

    # -- public API -----------------------------------------------------------------------------
    def reply(self, text: str) -> str:
        """The gold reply (in this world's ``reply_style``) to a bare world sentence."""
        try:
            return self._replies[text]
        except KeyError:
            raise KeyError(f"{text!r} is not a sentence of this mini world (seed={self.seed}); "
                           "replies exist for the sentences from asr_sentences() and the eval "
                           "items, normalised with normalize_transcript().") from None

    def asr_sentences(self, split: str = "train") -> list[str]:
        """Distinct normalised transcripts to synthesise: "train" (CTC + alignment) or
        "test" (held-out sentences for ASR error rates)."""
        if split not in self._asr:
            raise ValueError(f"asr_sentences split={split!r}: use 'train' or 'test'.")
        return list(self._asr[split])

    def qa_items(self, split: str = "heldout") -> list[QAItem]:
        """Spoken QA: "heldout" questions are never spoken in the ASR/alignment text (held-out
        fact questions are not in the LM's text either); "train" ones are (the gap between
        them measures memorisation). Half facts, half arithmetic."""
        if split not in ("train", "heldout"):
            raise ValueError(f"qa_items split={split!r}: use 'train' or 'heldout'.")
        rng = random.Random(f"mini-world/{self.seed}/qa/{split}")
        facts = sorted(self.fact_questions[split])
        facts = rng.sample(facts, min(len(facts), self.n_eval // 2))
        arith = rng.sample(sorted(self.arith_questions[split]), self.n_eval - len(facts))
        return [self._qa[t] for t in facts + arith]

    def translation_items(self) -> list[TranslationItem]:
        """Held-out EN->FR pairs (spoken English, French reference); prompt the model with
        ``TRANSLATE_INSTRUCTION``."""
        return list(self.translation_eval)

    def multiturn_items(self) -> list[MultiTurnItem]:
        """A held-out spoken question, then a typed follow-up that needs the first turn."""
        rng = random.Random(f"mini-world/{self.seed}/multiturn")
        out = []
        for t in rng.sample(sorted(self.arith_questions["heldout"]), self.n_eval // 2):
            q, (_, _, text, r2) = self._qa[t], self._arith_followup(rng, self._qa[t].answer)
            out.append(MultiTurnItem(t, q.answer, text, r2, "number"))
        for t in rng.sample(sorted(self.fact_questions["heldout"]),
                            min(self.n_eval - len(out), len(self.fact_questions["heldout"]))):
            q = self._qa[t]
            n = self._about[t]
            a2 = rng.choice([a for a in ATTRIBUTES if a != q.answer_type])
            out.append(MultiTurnItem(t, q.answer, ATTRIBUTES[a2][4], self.facts[(n, a2)], a2))
        return out

    def eval_sentences(self) -> list[str]:
        """Every transcript the eval speaks (QA, translation, multi-turn first turns)."""
        texts = {q.question for s in ("train", "heldout") for q in self.qa_items(s)}
        texts |= {t.en for t in self.translation_items()}
        texts |= {m.question for m in self.multiturn_items()}
        return sorted(texts)

    def lm_dialogs(self) -> list[Dialog]:
        """LM training dialogs (LM_TASKS shares), in a seeded random order."""
        rng = random.Random(f"mini-world/{self.seed}/lm")
        out = []
        for task, share in LM_TASKS.items():
            make = getattr(self, f"_dialog_{task}")
            for _ in range(round(share * self.n_lm_dialogs)):
                turns = make(rng)
                msgs = tuple({"role": ("user", "assistant")[i % 2], "content": c}
                             for i, c in enumerate(turns))
                out.append(Dialog(task, msgs, self.system_prompt))
        rng.shuffle(out)
        return out

    def instruction_pool(self, n_histories: int = 48) -> list:
        """The instructions the mini LM knows (text/instructions.py), one family each:
        "respond" (the bare utterance), "repeat", "rephrase", "translate" (EN->FR), and
        "history" (the utterance after an earlier text exchange, ``n_histories`` of them:
        training fact and arithmetic questions with their gold replies)."""
        from audiochat_jax.text.instructions import Instruction
        pool = [Instruction("respond"), Instruction("repeat", "repeat: {content}"),
                Instruction("rephrase", "rephrase: {content}"), Instruction("translate", TRANSLATE_INSTRUCTION)]
        rng = random.Random(f"mini-world/{self.seed}/histories")
        asked = self.fact_questions["train"] + self.arith_questions["train"]
        for t in rng.sample(asked, min(n_histories, len(asked))):
            pool.append(Instruction("history", "{content}", (("user", t), ("assistant", self._replies[t]))))
        return pool

    def tokenizer_corpus(self) -> list[str]:
        """Text lines for ``train_sentencepiece``: every dialog as the chat template writes
        it (so "[INST]" etc. get pieces), plus the system prompt."""
        lines = [" ".join(f"[INST] {d.messages[i]['content']} [/INST] "
                          f"{d.messages[i + 1]['content']}" for i in range(0, len(d.messages), 2))
                 for d in self.lm_dialogs()]
        return lines + ["<<SYS>> <</SYS>>"] + ([self.system_prompt] if self.system_prompt else [])

    # -- LM tasks: each returns the alternating user/assistant contents ------------------------
    def _dialog_fact_qa(self, rng):
        t = rng.choice(self.fact_questions["train"])
        return [t, self._replies[t]]

    def _dialog_arithmetic(self, rng):
        # Every combination, held-out ones included: the LM knows its sums (see the module
        # docstring); held-out combinations stay out of the ASR/alignment sentences.
        t = rng.choice(self.arith_questions["train"] + self.arith_questions["heldout"])
        return [t, self._replies[t]]

    def _dialog_statement(self, rng):
        t = rng.choice(self._pools["fact_statement"])
        return [t, self._replies[t]]

    def _dialog_arith_statement(self, rng):
        t = rng.choice(self.arith_statements)
        return [t, self._replies[t]]

    def _dialog_profile(self, rng):
        e = rng.choice(self.entities)
        if rng.random() < 0.5:
            attrs = list(ATTRIBUTES)
            text = f"tell me about {e.name}"
        else:
            attrs = sorted(rng.sample(list(ATTRIBUTES), 3), key=list(ATTRIBUTES).index)
            text = "summarize: " + " and ".join(self._fact(e.name, a) for a in attrs)
        preds = [_PREDICATE[a].format(v=e.facts[a]) for a in attrs]
        return [text, f"{e.name} {', '.join(preds[:-1])} and {preds[-1]}."]

    def _dialog_respond(self, rng):
        t = rng.choice(self._pools[rng.choice(("description", "command", "open_question"))])
        return [t, self._replies[t]]

    def _dialog_repeat(self, rng):
        t = rng.choice(self._asr["train"])
        return [f"repeat: {t}", t]

    def _dialog_rephrase(self, rng):
        if rng.random() < 0.5:
            (n, a), v = rng.choice(sorted(self.facts.items()))
            forms = [f.format(n=n, v=v) for f in ATTRIBUTES[a][3]]
            i = rng.randrange(2)
            return [f"rephrase: {forms[i]}", forms[1 - i] + "."]
        t = rng.choice(self._pools["description"])
        prep = next(p for p in sorted(PREPS, key=len, reverse=True) if f" {p} the " in t)
        subject, place = t.split(f" {prep} the ")
        return [f"rephrase: {t}", f"{prep} the {place}, {subject}."]

    def _dialog_translate(self, rng):
        if rng.random() < 0.5:
            t = rng.choice(self._pools["description"])
        else:
            t = rng.choice(self._train_translations)
        return [TRANSLATE_INSTRUCTION.format(content=t), self.french[t]]

    def _arith_followup(self, rng, first_answer):
        """A follow-up on an arithmetic answer whose own combo is not held out."""
        r1 = parse_numbers(first_answer.split())[0][2]
        while True:
            op, c = rng.choice(("plus", "minus", "times")), rng.randint(1, 10)
            if not 0 <= OPS[op](r1, c) <= 100:  # keep results within the taught range
                continue
            if arith_key(r1, op, c) in self.heldout_arith:
                continue
            r2 = number_words(OPS[op](r1, c))
            text = rng.choice(("what is that {op} {c}", "and {op} {c}")).format(
                op=op, c=number_words(c))
            return op, c, text, r2

    def _dialog_multi_turn(self, rng):
        kind = rng.choice(("arith", "fact", "translate"))
        if kind == "arith":
            t = rng.choice(self.arith_questions["train"])
            r1 = self._qa[t].answer
            op, c, text, r2 = self._arith_followup(rng, r1)
            e = f"{r1} {op} {number_words(c)}"
            return [t, self._replies[t], text, f"{e} is {r2}." if self.reply_style == "restate"
                    else f"{r2}."]
        if kind == "fact":
            t = rng.choice(self.fact_questions["train"])
            q = self._qa[t]
            n = self._about[t]
            options = [a for a in ATTRIBUTES if a != q.answer_type and (n, a) not in self.heldout_pairs]
            if not options:
                return [t, self._replies[t]]
            a2 = rng.choice(options)
            v2 = self.facts[(n, a2)]
            return [t, self._replies[t], ATTRIBUTES[a2][4],
                    self._fact(n, a2) + "." if self.reply_style == "restate" else v2 + "."]
        t = rng.choice(self._pools["description"])
        return [t, self._replies[t], "say that in french", self.french[t]]

