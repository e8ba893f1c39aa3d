"""Llama-2 chat template: token ids equal transformers' Llama tokenizer + the official
meta-llama/Llama-2-*-chat-hf jinja template (and Meta's chat_completion), spans are exact."""
import json
import random

import pytest

from audiochat_jax.text.chat_template import DialogTokens, audio_prompt_parts, encode_dialog
from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece

# The chat_template of meta-llama/Llama-2-7b-chat-hf's tokenizer_config.json, verbatim
# (JSON's "\\n" is a jinja string escape, hence "\\n" in this Python source).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)

WORDS = ("what is the colour of car alice bob paris lives in seven plus twelve nineteen "
         "repeat translate to french le chat est rouge bleu yes you said it please").split()

SYSTEM = "You are a helpful assistant. Answer briefly."
CASES = {
    "no_system": (None, [{"role": "user", "content": "what is seven plus twelve?"}]),
    "system": (SYSTEM, [{"role": "user", "content": "what is the colour of the car of alice?"}]),
    "multi_turn_system": (SYSTEM, [
        {"role": "user", "content": "what is seven plus twelve?"},
        {"role": "assistant", "content": "seven plus twelve is nineteen."},
        {"role": "user", "content": "  and plus one?  "},
    ]),
    "multi_turn_ends_with_assistant": (None, [
        {"role": "user", "content": "Translate to French: the car is red"},
        {"role": "assistant", "content": " la voiture est rouge "},
        {"role": "user", "content": "repeat it"},
        {"role": "assistant", "content": "la voiture est rouge"},
    ]),
}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + rng.choice("?.")
             for _ in range(1500)]
    # Chat markup in the training text, so "[INST]" gets real pieces, as in Llama-2's model.
    lines += ["[INST] <<SYS>> hi <</SYS>> [/INST] ok"] * 50
    return train_sentencepiece(lines, tmp_path_factory.mktemp("spm") / "chat", vocab_size=400)


@pytest.fixture(scope="module")
def tok(model_path):
    return Tokenizer(model_path)


@pytest.fixture(scope="module")
def hf_tok(model_path, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("hf")
    (d / "tokenizer.model").write_bytes(open(model_path, "rb").read())
    # legacy=True builds what meta-llama's shipped tokenizer.json does: a "▁" before the
    # text after every special token ("<s>[INST]" -> <s> ▁[ INST ]), matching Meta.
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": True, "bos_token": "<s>",
        "eos_token": "</s>", "unk_token": "<unk>", "chat_template": LLAMA2_CHAT_TEMPLATE}))
    with pytest.MonkeyPatch.context() as mp:
        try:
            from sentencepiece import sentencepiece_model_pb2  # noqa: F401
        except Exception:  # sentencepiece 0.2.3's proto needs protobuf>=7: transformers' copy
            import transformers.convert_slow_tokenizer as cst
            from transformers.utils import sentencepiece_model_pb2_new
            mp.setattr(cst, "import_protobuf", lambda *a, **k: sentencepiece_model_pb2_new)
        return transformers.AutoTokenizer.from_pretrained(str(d))


def _hf_ids(hf_tok, system, messages):
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + messages
    return list(hf_tok.apply_chat_template(msgs, tokenize=True)["input_ids"])


def _meta_chat_completion_ids(tok, system, dialog):
    """Meta's llama/generation.py chat_completion tokenisation, transcribed."""
    B_INST, E_INST, B_SYS, E_SYS = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"
    if system is not None:
        dialog = [{"role": dialog[0]["role"],
                   "content": B_SYS + system + E_SYS + dialog[0]["content"]}] + dialog[1:]
    ids = sum([tok.encode(f"{B_INST} {(p['content']).strip()} {E_INST} "
                          f"{(a['content']).strip()} ", bos=True, eos=True)
               for p, a in zip(dialog[::2], dialog[1::2])], [])
    if dialog[-1]["role"] == "user":  # Meta only builds prompts; HF also closes a reply
        ids += tok.encode(f"{B_INST} {(dialog[-1]['content']).strip()} {E_INST}", bos=True)
    return ids


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_equal_transformers_and_meta(case, tok, hf_tok):
    system, messages = CASES[case]
    got = encode_dialog(tok, messages, system=system)
    assert got.ids == _hf_ids(hf_tok, system, messages)
    assert got.ids == _meta_chat_completion_ids(tok, system, messages)
    # A leading system message means the same as system=.
    if system is not None:
        sys_msg = [{"role": "system", "content": system}]
        assert encode_dialog(tok, sys_msg + messages).ids == got.ids


@pytest.mark.parametrize("case", sorted(CASES))
def test_spans_decode_to_contents(case, tok):
    system, messages = CASES[case]
    got = encode_dialog(tok, messages, system=system)
    users = [m["content"] for m in messages if m["role"] == "user"]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [tok.decode(got.ids[s:e]) for s, e in got.user_spans] == [u.strip() for u in users]
    # Targets are the reply, the template's trailing "▁" (Meta's " {answer} ") and </s>.
    assert [tok.decode(got.ids[s:e]) for s, e in got.assistant_spans] == \
        [r.strip() + " " for r in replies]
    for s, e in got.assistant_spans:  # targets end with </s>, after "[/INST]"
        assert got.ids[e - 1] == tok.eos_id
        assert tok.decode(got.ids[:s]).endswith("[/INST]")
    for s, e in got.user_spans:  # nothing of the template leaks into a span
        assert "INST" not in tok.decode(got.ids[s:e]) and "SYS" not in tok.decode(got.ids[s:e])


def test_prefix_content_suffix_equals_full_encoding(tok):
    history = CASES["multi_turn_ends_with_assistant"][1][:2]
    for content in ["what is seven plus twelve?", "alice lives in paris", "x"]:
        for system, hist in [(None, []), (None, history), (SYSTEM, history)]:
            prefix, suffix = audio_prompt_parts(tok, system=system, history=hist)
            full = encode_dialog(tok, hist + [{"role": "user", "content": content}], system)
            assert prefix + tok.encode(content) + suffix == full.ids
            assert len(prefix) == full.user_spans[-1][0]


def test_first_turn_after_system_prompt_cuts_at_the_official_tokens(tok):
    # "\n\n" + content: sentencepiece drops the "▁" of the first word in context, so the
    # text path's content tokens differ from encode(content); prefix/suffix are still exact.
    content = "what is the colour of the car of alice?"
    prefix, suffix = audio_prompt_parts(tok, system=SYSTEM)
    full = encode_dialog(tok, [{"role": "user", "content": content}], SYSTEM)
    s, e = full.user_spans[0]
    assert (full.ids[:s], full.ids[e:]) == (prefix, suffix)
    assert tok.decode(full.ids[s:e]) == content
    assert tok.decode(prefix).endswith("<</SYS>>\n\n")


@pytest.mark.parametrize("instruction,text", [
    ("Repeat:", "Repeat: {}"),
    ("Translate to French: {content}", "Translate to French: {}"),
    ("{content} Please answer.", "{} Please answer."),
])
def test_instruction_wraps_the_audio(instruction, text, tok, hf_tok):
    content = "the car is red"
    prefix, suffix = audio_prompt_parts(tok, instruction=instruction)
    messages = [{"role": "user", "content": text.format(content)}]
    assert prefix + tok.encode(content) + suffix == _hf_ids(hf_tok, None, messages)


def test_bad_dialogs_are_named(tok):
    with pytest.raises(ValueError, match=r"messages\[1\].*alternate"):
        encode_dialog(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match=r"messages\[0\].*'role' and 'content'"):
        encode_dialog(tok, [{"text": "hi"}])
    with pytest.raises(TypeError, match=r"messages\[0\]\['content'\] must be a str"):
        encode_dialog(tok, [{"role": "user", "content": None}])
    with pytest.raises(ValueError, match="at least one user message"):
        encode_dialog(tok, [])
    with pytest.raises(ValueError, match="history has 1 messages"):
        audio_prompt_parts(tok, history=[{"role": "user", "content": "a"}])
    with pytest.raises(ValueError, match="whitespace"):
        audio_prompt_parts(tok, instruction="say:{content}")


def test_dialog_tokens_is_plain_data(tok):
    got = encode_dialog(tok, [{"role": "user", "content": "hi"}])
    assert isinstance(got, DialogTokens) and got.assistant_spans == []
    assert got.ids[0] == tok.bos_id and got.ids[-1] != tok.eos_id
