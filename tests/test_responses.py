"""Response precompute: exact answers on a sharded mesh, crash + resume, provenance, skips,
and the join into the speech input pipeline.

World: a sentencepiece model trained here, a random transformers Llama converted with our
converter (float32), and a tiny TFDS speech dataset with planted bad records. The reference
answers come from the same weights, one prompt at a time: our unbatched ``generate`` and
transformers' greedy ``generate`` on the HF model.
"""
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
import torch
from etils import epath

from audiochat_jax.convert.llama import convert
from audiochat_jax.data import provenance as prov
from audiochat_jax.data import responses as R
from audiochat_jax.data.input import InputConfig, SpeechInput
from audiochat_jax.data.speech_datasets import speech_features
from audiochat_jax.text.chat_template import encode_dialog
from audiochat_jax.text.tokenizer import Tokenizer, train_sentencepiece
from llama_fixtures import make_hf_llama

WORDS = "the cat sat on a mat what is seven plus twelve where does anna live red blue".split()
MAX_NEW = 10
GOOD = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(1 + i % 6)) for i in range(14)]
# id -> (text, why it must be skipped or None)
RECORDS = [(f"utt{i:02d}", t, None) for i, t in enumerate(GOOD)]
RECORDS.insert(3, ("utt90", "   ", "empty_transcript"))
RECORDS.insert(8, ("utt91", " ".join(WORDS * 6), "prompt_too_long"))
RECORDS.insert(12, ("utt05", "a second record with an id seen before", "duplicate_id"))


class ToySpeech(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    pkg_dir_path = epath.Path(__file__).parent  # tests/ is not a package

    def _info(self):
        return self.dataset_info_from_configs(features=speech_features())

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for k, (uid, text, _) in enumerate(RECORDS):
            yield k, {"id": uid, "audio": np.full(400 + 10 * k, k + 1, np.int16), "text": text,
                      "speaker": "s0"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(400)]
    tok = Tokenizer(train_sentencepiece(corpus + ["[INST] <<SYS>> [/INST]"], root / "spm",
                                        vocab_size=300))
    hf, hf_dir = make_hf_llama(root / "hf", vocab_size=tok.vocab_size, n_kv_heads=2, seed=1)
    with torch.no_grad():  # make EOS a likely next token, so both endings (EOS, truncation) occur
        hf.lm_head.weight[tok.eos_id] *= 1.6
    hf.save_pretrained(hf_dir, safe_serialization=True)
    convert(hf_dir, str(root / "llm"), param_dtype="float32", dtype="float32")
    builder = ToySpeech(data_dir=str(root / "tfds"))
    builder.download_and_prepare()
    return {"root": root, "tok": tok, "hf": hf, "llm": str(root / "llm"), "data": builder.data_dir}


def _config(world, out, **kw):
    base = dict(llm_dir=world["llm"], tokenizer=world["tok"].model_path, dataset_dir=world["data"],
                out_dir=str(out), split="train", max_new_tokens=MAX_NEW, batch_size=4,
                shard_size=5, length_multiple=40, mesh_shape=(2, 2, 2), max_prompt_length=40)
    # length_multiple = max_prompt_length: one padded width, one compile (tests stay fast)
    base.update(kw)
    return R.ResponsesConfig(**base)


@pytest.fixture(scope="module")
def full_run(world):
    """One uninterrupted run: params FSDP x TP sharded on (data 2, fsdp 2, tensor 2)."""
    out = world["root"] / "full"
    summary = R.run(_config(world, out), progress=False)
    return out, summary


def _records(path):
    return [json.loads(line) for line in open(path)]


def _expected(world):
    """(kept [(id, text)], {id: skip reason}) from the dataset's own order (TFDS shuffles
    examples by key at build time): the first record of an id is kept."""
    ds = tfds.builder_from_directory(world["data"]).as_dataset(split="train", shuffle_files=False)
    kept, skipped = [], {}
    for ex in ds.as_numpy_iterator():
        uid, text = ex["id"].decode(), ex["text"].decode()
        why = {(u, t): w for u, t, w in RECORDS}[(uid, text)]
        if uid in {u for u, _ in kept}:
            why = "duplicate_id"
        if why:
            skipped[uid] = why
        else:
            kept.append((uid, text))
    return kept, skipped


def test_responses_equal_unbatched_generate_and_transformers(world, full_run):
    from audiochat_jax.models.model_dir import load_model_dir
    from audiochat_jax.models.generate import generate
    from audiochat_jax.models.llama import LlamaConfig
    out, _ = full_run
    tok = world["tok"]
    got = {r["id"]: r for r in _records(out / R.RESPONSES_FILE)}
    good, _ = _expected(world)
    assert list(got) == [uid for uid, _ in good]  # dataset order, bad records absent
    meta, params = load_model_dir(world["llm"], "llama")
    cfg = LlamaConfig.from_dict(meta["config"])
    endings = set()
    for uid, text in good:
        prompt = encode_dialog(tok, [{"role": "user", "content": text}]).ids
        # transformers, same weights, this prompt alone and unpadded (an independent decoder)
        hf_out = world["hf"].generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                                      max_new_tokens=MAX_NEW, do_sample=False,
                                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        want = hf_out[0, len(prompt):].tolist()
        assert got[uid]["response_ids"] == want, uid
        # our generate, this prompt alone on one device (left-padded to one width: one compile)
        tokens = np.full((1, 40), tok.pad_id, np.int32)
        tokens[0, 40 - len(prompt):] = prompt
        new, n = generate(cfg, params, tokens=tokens, mask=tokens != tok.pad_id if tok.pad_id not in prompt
                          else np.arange(40)[None] >= 40 - len(prompt), max_new_tokens=MAX_NEW,
                          eos_id=tok.eos_id, pad_id=tok.pad_id)
        assert np.asarray(new)[0, :int(n[0])].tolist() == want, uid
        assert got[uid]["length"] == len(want) and got[uid]["prompt_length"] == len(prompt)
        assert got[uid]["truncated"] == (want[-1] != tok.eos_id)
        assert got[uid]["response_text"] == tok.decode([t for t in want if t != tok.eos_id])
        endings.add(got[uid]["truncated"])
    assert endings == {True, False}  # both EOS-ended and truncated replies are exercised


def test_bad_records_are_skipped_counted_and_listed(world, full_run):
    out, summary = full_run
    _, want = _expected(world)
    skipped = _records(out / R.SKIPPED_FILE)
    assert {s["id"]: s["reason"] for s in skipped} == want
    assert summary["skipped"] == 3 and summary["records"] == len(RECORDS)
    assert summary["skipped_by_reason"] == {"duplicate_id": 1, "empty_transcript": 1,
                                            "prompt_too_long": 1}


def test_malformed_jsonl_lines_are_skipped_and_counted(world, tmp_path):
    src = tmp_path / "t.jsonl"
    src.write_text('{"id": "a", "text": "the cat sat"}\nnot json\n{"text": "no id"}\n\n'
                   '{"id": "b", "text": "red blue"}\n')
    records, bad = R.read_transcripts(str(src), "ignored")
    assert records == [("a", "the cat sat"), ("b", "red blue")]
    assert [(b["id"], b["reason"]) for b in bad] == [(f"{src}:2", "malformed_record"),
                                                      (f"{src}:3", "malformed_record")]


def test_summary_and_provenance_describe_the_run(world, full_run):
    out, summary = full_run
    recs = _records(out / R.RESPONSES_FILE)
    lengths = [len(r["response_ids"]) for r in recs]
    assert json.loads((out / R.SUMMARY_FILE).read_text()) == summary
    assert summary["complete"] and summary["responses"] == len(recs) == 14
    assert summary["truncated"] == sum(r["response_ids"][-1] != 2 for r in recs)
    assert summary["empty_responses"] == sum(r["response_ids"] == [2] for r in recs)
    assert summary["response_length"]["max"] == max(lengths)
    assert summary["response_length"]["mean"] == pytest.approx(np.mean(lengths), abs=1e-3)
    assert summary["shards"] == 4  # 17 records / shard_size 5

    p = json.loads((out / R.PROVENANCE_FILE).read_text())
    tok_bytes = open(world["tok"].model_path, "rb").read()
    assert p["tokenizer"]["sha256"] == "sha256:" + hashlib.sha256(tok_bytes).hexdigest()
    assert p["llm"]["params_sha256"] == prov.fingerprint_dir(os.path.join(world["llm"], "params"))
    assert p["llm"]["config"]["vocab_size"] == world["tok"].vocab_size
    assert p["decoding"] == {"max_new_tokens": MAX_NEW, "temperature": 0.0, "top_p": 1.0, "seed": 0,
                             "batch_size": 4, "length_multiple": 40, "max_prompt_length": 40}
    assert p["prompt"]["instruction"] == "{content}" and p["prompt"]["system"] == ""
    # the audio path's prompt parts: prefix + transcript + suffix == the text prompt
    text = GOOD[2]
    assert p["prompt"]["audio_prefix_ids"] + world["tok"].encode(text) + p["prompt"]["audio_suffix_ids"] \
        == encode_dialog(world["tok"], [{"role": "user", "content": text}]).ids
    assert p["data"]["records"] == len(RECORDS) and len(p["runs"]) == 1
    assert set(p["runs"][0]["code_version"]) == {"package", "git"}


def test_params_fingerprint_follows_bytes_not_timestamps(tmp_path):
    d = tmp_path / "params"
    (d / "d").mkdir(parents=True)
    (d / "d" / "a").write_bytes(b"weights")
    (d / "_CHECKPOINT_METADATA").write_text('{"init_timestamp_nsecs": 1}')
    before = prov.fingerprint_dir(str(d))
    (d / "_CHECKPOINT_METADATA").write_text('{"init_timestamp_nsecs": 2}')
    assert prov.fingerprint_dir(str(d)) == before
    (d / "d" / "a").write_bytes(b"weightS")
    assert prov.fingerprint_dir(str(d)) != before


def test_crash_mid_shard_then_resume_recomputes_only_unfinished_shards(world, full_run, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "resumed"
    config = _config(world, out)
    first = R.run(config, max_shards=1, progress=False)  # a time-boxed job: one shard, then stop
    assert first == {"complete": False, "shards": 4, "shards_done": 1}
    shard0 = R.shard_path(str(out), 0, 4)
    stamp = os.stat(shard0).st_mtime_ns

    plan = R.plan_shards(*_items(world, config))
    n_batches = [len(R.shard_batches(s, config.batch_size)) for s in plan]
    real, calls = R.generate_batch, []

    def crash_in_shard_2(llm_cfg, params, prompts, **kw):
        calls.append(len(prompts))
        if len(calls) == n_batches[1] + n_batches[2]:  # shard 1 done, shard 2 on its last batch
            raise KeyboardInterrupt("simulated preemption")
        return real(llm_cfg, params, prompts, **kw)
    monkeypatch.setattr(R, "generate_batch", crash_in_shard_2)
    with pytest.raises(KeyboardInterrupt):
        R.run(config, progress=False)
    assert sorted(os.listdir(out / R.SHARDS_DIR)) == ["shard-00000-of-00004.jsonl",
                                                      "shard-00001-of-00004.jsonl"]
    (out / R.SHARDS_DIR / "shard-00002-of-00004.jsonl.tmp-dead").write_text("half a shard")

    rows = []
    monkeypatch.setattr(R, "generate_batch", lambda llm_cfg, params, prompts, **kw: (
        rows.extend(prompts), real(llm_cfg, params, prompts, **kw))[1])
    summary = R.run(config, progress=False)
    full_out, full_summary = full_run
    assert len(rows) == len(plan[2]) + len(plan[3])  # shards 0 and 1 were not recomputed
    assert os.stat(shard0).st_mtime_ns == stamp
    assert "shard-00002-of-00004.jsonl.tmp-dead" not in os.listdir(out / R.SHARDS_DIR)
    assert (out / R.RESPONSES_FILE).read_text() == (full_out / R.RESPONSES_FILE).read_text()
    assert summary == full_summary
    assert len(json.loads((out / R.PROVENANCE_FILE).read_text())["runs"]) == 3


def _items(world, config):
    records = [(r["id"], r["text"]) for r in _records(os.path.join(config.out_dir, R.TRANSCRIPTS_FILE))]
    items, _ = R.make_items(records, world["tok"], config, 128)
    return items, len(records), config.shard_size


def test_rerun_with_other_settings_is_refused(world, full_run):
    out, _ = full_run
    with pytest.raises(ValueError, match=r"decoding\.max_new_tokens.*new config.responses.out_dir"):
        R.run(_config(world, out, max_new_tokens=MAX_NEW + 1), progress=False)


def test_output_joins_in_the_input_pipeline(world, full_run):
    out, _ = full_run
    table = R.load_responses(str(out))
    it = SpeechInput(InputConfig(data_dir=world["data"], split="train", batch_size=4, buckets=(800,),
                                 max_response_length=MAX_NEW, shuffle=False, repeat=False),
                     responses=table)
    seen, prompts = {}, set()
    for batch in it:
        for r, uid in enumerate(batch["ids"]):
            if batch["valid"][r]:
                seen[uid] = batch["response_ids"][r, :batch["response_lengths"][r]].tolist()
                prompts.add((tuple(batch["prefix_ids"][r, :batch["prefix_lengths"][r]]),
                             tuple(batch["suffix_ids"][r, :batch["suffix_lengths"][r]])))
    assert seen == {k: list(v[0].response) for k, v in table.items()} and len(seen) == 14
    assert all(len(v) == 1 and v[0].family == "respond" for v in table.values())
    # one instruction ("{content}"): every row has its prompt, the audio path's parts
    p = json.loads((out / R.PROVENANCE_FILE).read_text())["prompt"]
    assert prompts == {(tuple(p["audio_prefix_ids"]), tuple(p["audio_suffix_ids"]))}
    # the two skipped ids that are not duplicates have no response: dropped, counted
    assert it.stats["no_response"] == 2


def test_config_file_and_cli(world, full_run, tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfg", "configs/responses_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config("continue,sample")
    assert c.responses.temperature == 0.7 and "{content}" in c.responses.instruction
    with pytest.raises(ValueError, match="config.responses.llm_dir is not set"):
        R.ResponsesConfig.from_dict(module.get_config().responses.to_dict())
    with pytest.raises(ValueError, match="unknown field"):
        R.ResponsesConfig.from_dict({"llm_dir": "x", "nope": 1})
    # the CLI on (a copy of) a finished run: nothing to generate, prints the summary
    out, summary = tmp_path / "copy", full_run[1]
    shutil.copytree(full_run[0], out)
    cfg = _config(world, out)
    overrides = [f"--config.responses.{k}={v}" for k, v in cfg.to_dict().items() if k != "mesh_shape"]
    proc = subprocess.run([sys.executable, "-m", "audiochat_jax.responses",
                           "--config=configs/responses_example.py", *overrides,
                           "--config.responses.mesh_shape=(2,2,2)"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == summary
    assert len(json.loads((out / R.PROVENANCE_FILE).read_text())["runs"]) == 2


POOL = [
    {"family": "respond", "template": "{content}"},
    {"family": "repeat", "template": "repeat: {content}"},
    {"family": "repeat", "template": "say again: {content} please"},
    {"family": "history", "template": "{content}",
     "history": [{"role": "user", "content": "red"}, {"role": "assistant", "content": "blue"}]},
    {"family": "translate", "template": "translate to french: {content}"},
]


@pytest.fixture(scope="module")
def pool_run(world):
    pool = world["root"] / "pool.jsonl"
    pool.write_text("".join(json.dumps(p) + "\n" for p in POOL))
    out = world["root"] / "pool_run"
    config = _config(world, out, instructions=str(pool), heldout_families="translate", per_utterance=2,
                     max_prompt_length=110, length_multiple=110, system="be brief")
    return config, R.run(config, progress=False)


def test_stored_responses_carry_their_instruction_and_the_prompt_around_the_content(world, pool_run):
    from audiochat_jax.text.instructions import Instruction
    config, summary = pool_run
    tok = world["tok"]
    recs = _records(os.path.join(config.out_dir, R.RESPONSES_FILE))
    good, _ = _expected(world)
    texts = dict(good)
    assert summary["responses"] == len(recs) == 2 * len(good)  # two families per utterance
    assert set(summary["responses_by_family"]) == {"respond", "repeat", "history"}
    for r in recs:
        instr = Instruction.from_dict(r["instruction"])
        assert instr.family == r["family"] != "translate"
        # The text prompt the LLM answered, token for token: prefix + the transcript's own
        # tokens + suffix, the prefix and suffix being exactly what the audio prompt uses.
        ids = encode_dialog(tok, instr.messages(texts[r["id"]]), system="be brief").ids
        s, e = len(r["prefix_ids"]), len(ids) - len(r["suffix_ids"])
        assert ids[:s] == r["prefix_ids"] and ids[e:] == r["suffix_ids"]
        assert tok.decode(ids[s:e]).strip() == texts[r["id"]]
        assert r["prompt_length"] == len(ids)
        if instr.history:
            assert tok.decode(r["prefix_ids"]).count("[INST]") == 2
    # the answers are the LLM's greedy answers to those prompts (transformers, one at a time)
    for r in recs[:6]:
        prompt = encode_dialog(tok, Instruction.from_dict(r["instruction"]).messages(texts[r["id"]]),
                               system="be brief").ids
        hf_out = world["hf"].generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                                      max_new_tokens=MAX_NEW, do_sample=False,
                                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
        assert r["response_ids"] == hf_out[0, len(prompt):].tolist()
    with open(os.path.join(config.out_dir, R.PROVENANCE_FILE)) as f:
        p = json.load(f)
    assert p["prompt"]["families"] == ["respond", "repeat", "history"]
    assert p["prompt"]["heldout_families"] == ["translate"] and p["prompt"]["per_utterance"] == 2


def test_instruction_draws_are_seeded_by_utterance(world, pool_run):
    from audiochat_jax.text import instructions as I
    pool = [I.Instruction.from_dict(p) for p in POOL]
    a = I.draw(pool, "utt01", 2, seed=0)
    assert a == I.draw(pool, "utt01", 2, seed=0) and len({i.family for i in a}) == 2
    assert len({tuple(i.family for i in I.draw(pool, f"u{k}", 2)) for k in range(40)}) > 3
    assert [i.family for i in I.draw(pool, "x", 0)] == ["respond", "repeat", "history", "translate"]
    with pytest.raises(ValueError, match="both used and held out"):
        I.select(pool, ["repeat"], ["repeat"])
    with pytest.raises(ValueError, match=r"\['sing'\] are not in the pool"):
        I.select(pool, ["sing"])
    with pytest.raises(ValueError, match="once"):
        I.Instruction("x", "{content} and {content}")
    with pytest.raises(ValueError, match="whole user/assistant exchanges"):
        I.Instruction("x", history=({"role": "user", "content": "hi"},))
    bad = world["root"] / "bad_pool.jsonl"
    bad.write_text('{"family": "a"}\n{"template": "x {content}"}\n')
    with pytest.raises(ValueError, match="bad_pool.jsonl:2: not an instruction"):
        I.read_pool(str(bad))
    with pytest.raises(ValueError, match="either an instruction pool"):
        _config(world, world["root"] / "x", instructions=str(bad), instruction="say: {content}")
