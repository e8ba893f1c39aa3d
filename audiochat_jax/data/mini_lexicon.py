"""The mini world's vocabulary: spelled-out numbers, people's attributes, arithmetic, and the
English -> French lexicon of its scene sentences (data/mini_world.py builds the world from
these). Everything here is a constant or a pure function.
"""
from __future__ import annotations

import re
import unicodedata

TRANSCRIPT_ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # = text/char_vocab.ENGLISH_CHARS
REPLY_STYLES = ("restate", "short")
# The typed instruction around spoken English in translation (audio_prompt_parts(instruction=)).
TRANSLATE_INSTRUCTION = "translate to french: {content}"

# ----------------------------------------------------------------------------- numbers
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
          "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """0 <= n < 1000 spelled the way espeak reads it and CTC can spell it: "twenty one"."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_words supports 0..999, got {n}")
    if n >= 100:
        rest = n % 100
        return f"{_UNITS[n // 100]} hundred" + (f" {number_words(rest)}" if rest else "")
    if n < 20:
        return _UNITS[n]
    return _TENS[n // 10] + (f" {_UNITS[n % 10]}" if n % 10 else "")


def parse_numbers(words: list[str]) -> list[tuple[int, int, int]]:
    """Maximal spelled-out numbers in ``words`` as (start, end, value), left to right."""
    out, i = [], 0
    while i < len(words):
        j, value = i, None
        if words[j] in _UNITS:
            value, j = _UNITS.index(words[j]), j + 1
            if j < len(words) and words[j] == "hundred" and value > 0:
                value, j = value * 100, j + 1
        if (value is None or value >= 100) and j < len(words) and words[j] in _TENS[2:]:
            value, j = (value or 0) + 10 * _TENS.index(words[j]), j + 1
            if j < len(words) and words[j] in _UNITS[1:10]:
                value, j = value + _UNITS.index(words[j]), j + 1
        elif value is not None and value >= 100 and j < len(words) and words[j] in _UNITS[1:]:
            value, j = value + _UNITS.index(words[j]), j + 1
        if value is None:
            i += 1
        else:
            out.append((i, j, value))
            i = j
    return out


def normalize_transcript(text: str) -> str:
    """Any text -> the transcript alphabet (lowercase a-z, apostrophe, single spaces).

    Accents are stripped (é -> e), digits spelled out (12 -> twelve), hyphens and other
    punctuation become spaces, apostrophes survive only inside words ("alice's")."""
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'"))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()) % 1000)} ", text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)
    return " ".join(text.split())


# ----------------------------------------------------------------------------- entities
NAMES = ("alice bob carol david emma frank grace henry isla jack kate leo mia noah olivia "
         "paul rose sam tina victor wendy oscar lucy max nina peter ruby simon laura tom "
         "hannah ben").split()
ATTRIBUTES = {  # values, questions, canonical fact, statement forms, pronoun follow-up
    "car": (("red", "blue", "green", "black", "white", "yellow", "brown", "pink"),
            ("what colour is {n}'s car", "what colour is the car of {n}",
             "which colour does {n}'s car have"),
            "{n}'s car is {v}", ("{n} has a {v} car", "{n}'s car is {v}"),
            "and what colour is their car"),
    "city": (("paris", "london", "rome", "berlin", "madrid", "vienna", "dublin", "oslo",
              "lisbon", "prague"),
             ("where does {n} live", "in which city does {n} live", "what city does {n} live in"),
             "{n} lives in {v}", ("{n} lives in {v}", "{n}'s home is in {v}"),
             "and where do they live"),
    "pet": (("cat", "dog", "rabbit", "horse", "parrot", "goat", "mouse", "duck", "pig", "turtle"),
            ("what pet does {n} have", "which animal does {n} keep",
             "what kind of pet does {n} own"),
            "{n} has a {v}", ("{n} has a {v}", "{n}'s pet is a {v}"), "and what pet do they have"),
    "job": (("baker", "doctor", "teacher", "farmer", "pilot", "singer", "painter", "driver",
             "nurse", "writer"),
            ("what is {n}'s job", "what does {n} do for a living", "what job does {n} have"),
            "{n} works as a {v}", ("{n} works as a {v}", "{n} is a {v}"),
            "and what is their job"),
    "fruit": (("apples", "bananas", "grapes", "cherries", "lemons", "pears", "plums", "melons"),
              ("what fruit does {n} like", "which fruit does {n} like best",
               "what does {n} like to eat"),
              "{n} likes {v}", ("{n} likes {v}", "{n} loves to eat {v}"),
              "and what fruit do they like"),
}
ANSWER_VALUES = {a: spec[0] for a, spec in ATTRIBUTES.items()}

# ----------------------------------------------------------------------------- arithmetic
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
ARITH_QUESTIONS = ("what is {e}", "how much is {e}", "can you tell me what {e} is")


def arith_key(a, op, b):
    """Held-out unit: commutative combos are held out together (7+12 with 12+7)."""
    return (op, min(a, b), max(a, b)) if op != "minus" else (op, a, b)


# ----------------------------------------------------------------------------- scene + lexicon
# English -> French. Nouns carry gender; adjectives (masc, fem) and whether they precede the
# noun in French. Every English word a translation template can produce is in LEXICON.
NOUNS = {"cat": ("chat", "m"), "dog": ("chien", "m"), "bird": ("oiseau", "m"),
         "horse": ("cheval", "m"), "mouse": ("souris", "f"), "ball": ("balle", "f"),
         "cup": ("tasse", "f"), "box": ("boîte", "f"), "book": ("livre", "m"),
         "hat": ("chapeau", "m"), "chair": ("chaise", "f"), "duck": ("canard", "m")}
PLACES = {"table": ("table", "f"), "door": ("porte", "f"), "tree": ("arbre", "m"),
          "house": ("maison", "f"), "bed": ("lit", "m"), "window": ("fenêtre", "f"),
          "bridge": ("pont", "m")}
COLOURS = {"red": ("rouge", "rouge"), "blue": ("bleu", "bleue"), "green": ("vert", "verte"),
           "black": ("noir", "noire"), "white": ("blanc", "blanche"),
           "yellow": ("jaune", "jaune"), "brown": ("marron", "marron"), "pink": ("rose", "rose")}
SIZES = {"small": ("petit", "petite"), "big": ("grand", "grande")}  # before the noun in French
VERBS = {"sleeps": "dort", "waits": "attend", "plays": "joue", "runs": "court",
         "jumps": "saute", "sings": "chante", "hides": "se cache", "eats": "mange",
         "stays": "reste", "falls": "tombe", "rolls": "roule"}
ANIMALS = ("bird", "cat", "dog", "duck", "horse", "mouse")  # the rest of NOUNS are objects
OBJECT_VERBS = ("falls", "rolls", "stays")  # what objects do; animals do the other verbs
PREPS = {"under": "sous", "behind": "derrière", "on": "sur", "in front of": "devant"}
FUNCTION_WORDS = {"the": "le/la", "a": "un/une", "is": "est", "has": "a", "i": "je",
                  "see": "vois"}
LEXICON = {**{k: v[0] for k, v in NOUNS.items()}, **{k: v[0] for k, v in PLACES.items()},
           **{k: v[0] for k, v in COLOURS.items()}, **{k: v[0] for k, v in SIZES.items()},
           **VERBS, **PREPS, **FUNCTION_WORDS}


def noun_phrase(noun, size=None, colour=None, table=NOUNS):
    """English noun phrase (without article) and its French (with definite article)."""
    fr, g = table[noun]
    words = [SIZES[size][g == "f"]] if size else []
    words += [fr] + ([COLOURS[colour][g == "f"]] if colour else [])
    art = "l'" if words[0][0] in "aeiouh" else ("la " if g == "f" else "le ")
    en = " ".join(w for w in (size, colour, noun) if w)
    return en, art + " ".join(words)


def translation_template(kind, rng_item):
    """One EN sentence + its French for a translation-template instance tuple."""
    if kind == "is_adj":  # the cat is red -> le chat est rouge
        noun, adj = rng_item
        en, fr = noun_phrase(noun)
        g = NOUNS[noun][1]
        fr_adj = (COLOURS.get(adj) or SIZES[adj])[g == "f"]
        return f"the {en} is {adj}", f"{fr} est {fr_adj}"
    if kind == "has":  # alice has a red cup -> alice a une tasse rouge
        name, colour, noun = rng_item
        fr, g = NOUNS[noun]
        art = "une" if g == "f" else "un"
        return f"{name} has a {colour} {noun}", f"{name} a {art} {fr} {COLOURS[colour][g == 'f']}"
    if kind == "see":  # i see the small dog -> je vois le petit chien
        size, noun = rng_item
        en, fr = noun_phrase(noun, size=size)
        return f"i see the {en}", f"je vois {fr}"
    # scene description: the small red dog sleeps under the table
    size, colour, noun, verb, prep, place = rng_item
    en, fr = noun_phrase(noun, size, colour)
    pen, pfr = noun_phrase(place, table=PLACES)
    return f"the {en} {verb} {prep} the {pen}", f"{fr} {VERBS[verb]} {PREPS[prep]} {pfr}"


def OPTIONAL(d):  # noqa: N802  (an optional slot of a template: absent or any value)
    return (None, *sorted(d))
