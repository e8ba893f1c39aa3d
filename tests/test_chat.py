"""The chat CLI driven through stdin on a tiny random speech LLM: text and audio turns, streamed
replies equal to models.generate's, bad audio reported by name while the session goes on."""
import io
import os

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from eval_fixtures import make_speech_llm, make_world
from audiochat_jax import chat
from audiochat_jax.inference import dialog as dialog_lib
from audiochat_jax.inference.speech_model import SpeechModel
from audiochat_jax.models.generate import generate
from audiochat_jax.text.chat_template import encode_dialog
from speech_fixtures import tone

MAX_NEW = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    w = make_world(root, max_seq_len=256)
    aligned = make_speech_llm(w)
    wav = os.path.join(str(root), "q.wav")
    sf.write(wav, tone(5, 0.6), 16000, subtype="PCM_16")
    return {"aligned": aligned, "wav": wav, "root": str(root),
            "model": SpeechModel.load(aligned, batch_rows=1)}


def _greedy(model, ids):
    new, n = generate(model.llm_config, model.llm_params, tokens=jnp.asarray([ids]), mask=jnp.ones((1, len(ids)), bool),
                      max_new_tokens=MAX_NEW, eos_id=model.tokenizer.eos_id, pad_id=model.tokenizer.pad_id)
    out = np.asarray(new)[0, :int(n[0])].tolist()
    return model.tokenizer.decode([t for t in out if t != model.tokenizer.eos_id]).strip()


def test_dialog_parts_are_the_chat_template_with_audio_in_place(setup):
    model = setup["model"]
    tok = model.tokenizer
    d = dialog_lib.Dialog(tok)
    d.add_user(text="what is seven plus twelve")
    d.add_assistant("red cat")
    audio = np.ones((3, model.llm_config.dim), np.float32)
    d.add_user(audio=audio, instruction="translate to french: {content}")
    d.add_assistant("le chat")
    d.add_user(text="where does anna live")
    assert [type(p).__name__ for p in d.parts] == ["list", "ndarray", "list"]
    placeholder = tok.encode(dialog_lib.PLACEHOLDER)
    flat = d.parts[0] + placeholder + d.parts[2]
    assert flat == encode_dialog(tok, d.messages).ids
    assert d.messages[2]["content"] == "translate to french: x"


def test_chat_streams_text_and_audio_turns_and_survives_bad_audio(setup, monkeypatch, capsys):
    model = setup["model"]
    bad = os.path.join(setup["root"], "missing.wav")
    lines = ["what is seven plus twelve", setup["wav"], bad, "where does anna live", ""]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines)))
    assert chat.main(["--ckpt", setup["aligned"], "--max_new_tokens", str(MAX_NEW)]) == 0
    out, err = capsys.readouterr()
    assert "missing.wav" in err and "no such file" in err
    # Recompute the session without the bad turn, one stream per turn.
    s, d, expected = dialog_lib.Streamer(model), dialog_lib.Dialog(model.tokenizer), []
    for line in (lines[0], lines[1], lines[3]):
        chat.user_turn(model, d, line)
        expected.append(model.tokenizer.decode(list(s.stream(d.parts, MAX_NEW))))
        d.add_assistant(expected[-1].strip())
    assert out == "".join(f"assistant> {r}\n" for r in expected)
    # Turn 1 (text) is exactly the batch generator's greedy answer to the template tokens.
    first = [{"role": "user", "content": lines[0]}]
    assert expected[0].strip() == _greedy(model, encode_dialog(model.tokenizer, first).ids)
    assert d.messages[2]["content"] == dialog_lib.PLACEHOLDER and len(d.messages) == 6


def test_one_shot_audio_and_unreadable_audio(setup, capsys, tmp_path):
    assert chat.main(["--ckpt", setup["aligned"], "--audio", setup["wav"], "--max_new_tokens", "3"]) == 0
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all")
    assert chat.main(["--ckpt", setup["aligned"], "--audio", str(junk)]) == 1
    err = capsys.readouterr().err
    assert "junk.wav" in err and "not a readable audio file" in err


def test_parse_turn_finds_the_audio_path_and_its_instruction(setup):
    assert chat.parse_turn("what is two plus two") == ("text", None, "what is two plus two")
    assert chat.parse_turn(f"translate to french: {setup['wav']}") == \
        ("audio", setup["wav"], "translate to french: {content}")
    assert chat.parse_turn("clip.flac")[0:2] == ("audio", "clip.flac")
