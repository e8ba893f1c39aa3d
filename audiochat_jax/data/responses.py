"""Response precompute: the frozen LLM answers every transcript (the modal-invariance targets).

    python -m audiochat_jax.responses --config configs/responses_example.py \\
        --config.responses.llm_dir=work/llm --config.responses.out_dir=work/responses ...

For every ``(id, text)`` of a speech split (a prepared TFDS dataset, or a JSONL of
``{"id", "text"}``), the LLM answers the Llama-2 chat prompt of an *instruction* with the
transcript as its ``{content}``; the answers are the targets the audio path is trained to
reproduce, in the same prompt with the audio in the transcript's place. The instructions
come from a pool (``instructions``: a JSONL file, text/instructions.py): per utterance
``per_utterance`` of its families are drawn (0 = all), seeded by the utterance id, minus
``heldout_families`` (never given targets: the report tests them zero-shot through audio).
Without a pool, the one ``instruction`` template is used (family "respond").
Output, under ``OUT = config.out_dir``::

    provenance.json    who wrote the targets: LLM params fingerprint + config, tokenizer hash,
                       template/system/instruction (+ the audio path's prefix/suffix ids),
                       decoding settings, seed, plan, code version of every run
    transcripts.jsonl  the input snapshot {"id", "text"}, dataset order (read once, process 0)
    skipped.jsonl      every record not sent to the LLM: {"id", "reason", "detail"}
    shards/shard-00003-of-00010.jsonl   per (utterance, instruction), dataset order:
                       {"id", "family", "instruction" (Instruction.to_dict), "prefix_ids",
                       "suffix_ids" (the prompt's tokens before / after the content: the
                       audio prompt is prefix + audio + suffix), "response_ids", "length",
                       "truncated", "prompt_length", "response_text"}
    responses.jsonl    all shards merged when the last one lands: what data/input.py joins
                       (``load_responses(OUT)``)
    summary.json       counts, prompt/response lengths, truncations, empty replies, skips

``response_ids`` are exactly the tokens ``models.generate`` produced, up to and including the
EOS when one came (``length == len(response_ids)``); ``truncated``: no EOS within
``max_new_tokens`` (the ids stop mid-reply); an *empty* response is one whose first token is
EOS. Skipped records (duplicate id, empty transcript, prompt too long, malformed JSONL line)
are counted, logged and listed; they get no response, so data/input.py drops them as
``no_response``.

Plan (identical on every host: a pure function of transcripts.jsonl and the config): shard
``k`` holds dataset records ``[k * shard_size, (k + 1) * shard_size)``; inside a shard the
prompts are sorted by length and cut into global batches of ``batch_size`` rows, each left
padded to a multiple of ``length_multiple`` tokens, so padding is small and ``generate``
compiles once per width. The params are restored sharded by their logical axis names onto
the mesh ``mesh_shape``; each batch is a global array split over (data, fsdp), built with
``make_array_from_callback`` so every host feeds exactly its devices' rows; process 0
gathers the answers and writes. Sampling (``temperature > 0``) uses the key
``fold_in(fold_in(key(seed), shard), batch)``, so a resumed run samples what an
uninterrupted one would.

Resume: a shard file appears only by renaming a finished temporary file, so an existing
shard is complete; a rerun skips it (after checking its ids against the plan) and refuses
to go on if the model, tokenizer, prompt, decoding or plan differ from provenance.json.
One job per OUT at a time (stale temporary files are deleted at start).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import logging

from audiochat_jax.data import provenance as prov
from audiochat_jax.data.llm_on_mesh import generate_batch, load_llm
from audiochat_jax.text import instructions as instructions_lib
from audiochat_jax.text.chat_template import encode_dialog
from audiochat_jax.text.instructions import DEFAULT_FAMILY, Instruction
from audiochat_jax.util.config_fields import DictConfig

FORMAT = "audiochat_jax.responses/1"
RESPONSES_FILE, SUMMARY_FILE, PROVENANCE_FILE = "responses.jsonl", "summary.json", "provenance.json"
TRANSCRIPTS_FILE, SKIPPED_FILE, SHARDS_DIR = "transcripts.jsonl", "skipped.jsonl", "shards"
MALFORMED_FILE = "malformed.jsonl"  # unreadable JSONL input lines, found when the snapshot is made


@dataclasses.dataclass(frozen=True)
class ResponsesConfig(DictConfig):
    """What ``config.responses`` holds (plain JSON-able fields)."""
    config_name = "config.responses"
    llm_dir: str       # model directory (kind "llama") from convert or the mini `lm` stage
    tokenizer: str     # the sentencepiece .model the LLM was trained with
    dataset_dir: str   # prepared TFDS dataset dir (.../NAME/1.0.0), or a .jsonl of {"id", "text"}
    out_dir: str
    split: str = "train"              # TFDS split (unused for .jsonl)
    instruction: str = "{content}"    # the user turn; {content} = transcript; a plain prefix
                                      # "Continue:" means "Continue: {content}" (no pool only)
    instructions: str = ""            # instruction pool (JSONL, text/instructions.py); "" = none
    families: str = ""                # pool families to answer (comma-separated; "" = all)
    heldout_families: str = ""        # pool families never answered (kept for zero-shot tests)
    per_utterance: int = 1            # families drawn per utterance (0 = every family)
    system: str = ""                  # system prompt ("" = none)
    max_new_tokens: int = 64
    max_prompt_length: int = 0        # 0: limited only by the LLM's max_seq_len - max_new_tokens
    batch_size: int = 8               # global rows per generate call, over all hosts
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    shard_size: int = 1024            # dataset records per output shard
    length_multiple: int = 16         # prompt widths are padded to a multiple (fewer compiles)
    mesh_shape: tuple[int, ...] = (-1, 1, 1)  # (data, fsdp, tensor); -1 = the rest

    def __post_init__(self):
        object.__setattr__(self, "mesh_shape", tuple(int(x) for x in self.mesh_shape))
        for name in ("llm_dir", "tokenizer", "dataset_dir", "out_dir"):
            if not getattr(self, name):
                raise ValueError(f"config.responses.{name} is not set; pass "
                                 f"--config.responses.{name}=...")
        if self.per_utterance < 0:
            raise ValueError(f"config.responses.per_utterance={self.per_utterance} must be >= 0 (0 = all)")
        if self.instructions and self.instruction != "{content}":
            raise ValueError("config.responses: give either an instruction pool (instructions=FILE) or "
                             "one instruction template, not both")
        for name in ("max_new_tokens", "batch_size", "shard_size", "length_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"config.responses.{name}={getattr(self, name)} must be >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"config.responses: need temperature >= 0 and 0 < top_p <= 1 "
                             f"(got {self.temperature}, {self.top_p})")



def default_config():
    """``config.responses`` with defaults; the four paths are placeholders that must be set."""
    import ml_collections
    from ml_collections import config_dict
    c = ml_collections.ConfigDict()
    for f in dataclasses.fields(ResponsesConfig):
        if f.default is dataclasses.MISSING:
            c[f.name] = config_dict.placeholder(str)
        else:
            c[f.name] = f.default
    return c


class Item(NamedTuple):
    index: int          # position in transcripts.jsonl (dataset order)
    id: str
    prompt: list[int]   # the full chat prompt token ids
    instruction: Instruction
    prefix: list[int]   # prompt[:content start]
    suffix: list[int]   # prompt[content end:]


def instruction_pool(config: ResponsesConfig) -> list[Instruction]:
    """The instructions this run answers with: the pool's selected families, or the single
    ``instruction`` as family "respond"."""
    pool = (instructions_lib.read_pool(config.instructions) if config.instructions
            else [Instruction(DEFAULT_FAMILY, config.instruction)])
    return instructions_lib.select(pool, instructions_lib.parse_names(config.families),
                                   instructions_lib.parse_names(config.heldout_families))


# ------------------------------------------------------------------ reading transcripts
def read_transcripts(dataset_dir: str, split: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """``[(id, text)]`` in dataset order, and the malformed records (JSONL input only)."""
    if dataset_dir.endswith(".jsonl"):
        records, bad = [], []
        with prov.gfile().GFile(dataset_dir) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    records.append((str(rec["id"]), str(rec["text"])))
                except (ValueError, KeyError, TypeError) as e:
                    bad.append({"id": f"{dataset_dir}:{n}", "reason": "malformed_record",
                                "detail": f"expected {{\"id\": str, \"text\": str}}: {e}"})
        return records, bad
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder_from_directory(dataset_dir)
    except Exception as e:  # tfds raises several types for a wrong path
        raise FileNotFoundError(
            f"config.responses.dataset_dir={dataset_dir!r} is neither a prepared TFDS dataset "
            f"(a directory with dataset_info.json, e.g. WORK/speech/NAME/1.0.0) nor a .jsonl "
            f"file: {e}") from e
    if split not in builder.info.splits:
        raise ValueError(f"config.responses.split={split!r} not in {dataset_dir}; available: "
                         f"{sorted(builder.info.splits)}")
    # Only id and text are decoded: the audio bytes are read but never turned into arrays.
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({"id": True, "text": True}))
    return [(ex["id"].decode(), ex["text"].decode()) for ex in ds.as_numpy_iterator()], []


# ------------------------------------------------------------------ prompts and plan
def prompt_ids(tokenizer, text: str, config: ResponsesConfig) -> list[int]:
    """The chat prompt for one transcript with the single ``instruction`` (no pool)."""
    return encode_dialog(tokenizer, Instruction(DEFAULT_FAMILY, config.instruction).messages(text),
                         system=config.system or None).ids


def make_items(records, tokenizer, config: ResponsesConfig, max_seq_len: int):
    """Tokenised prompts, one per (record, drawn instruction), and the skipped records
    (duplicate id, empty text, prompt too long).

    Each prompt is ``encode_dialog`` of the instruction's dialog with the transcript as its
    content; its tokens outside the content span must equal the instruction's audio-prompt
    ``parts`` (so the text and audio prompts differ only where the audio goes), else the
    pair is skipped as ``content_span_mismatch``.
    """
    limit = max_seq_len - config.max_new_tokens
    if config.max_prompt_length:
        limit = min(limit, config.max_prompt_length)
    if limit < 1:
        raise ValueError(f"config.responses.max_new_tokens={config.max_new_tokens} leaves no room "
                         f"for a prompt in the LLM's max_seq_len={max_seq_len}")
    system = config.system or None
    pool = instruction_pool(config)
    parts = {}  # the prefix/suffix do not depend on the content: once per instruction
    items, skipped, seen = [], [], set()
    for index, (uid, text) in enumerate(records):
        reason = detail = None
        if uid in seen:
            reason, detail = "duplicate_id", "an earlier record has this id; responses are keyed by id"
        elif not text.strip():
            reason, detail = "empty_transcript", "nothing for the LLM to answer"
        seen.add(uid)
        if reason is not None:
            skipped.append({"id": uid, "reason": reason, "detail": detail})
            continue
        for instr in instructions_lib.draw(pool, uid, config.per_utterance, config.seed):
            if instr not in parts:
                parts[instr] = instr.parts(tokenizer, system)
            prefix, suffix = parts[instr]
            ids = encode_dialog(tokenizer, instr.messages(text), system=system).ids
            reason = None
            if len(ids) > limit:
                reason, detail = "prompt_too_long", (
                    f"{len(ids)} prompt tokens > {limit} (max_seq_len {max_seq_len} - "
                    f"max_new_tokens {config.max_new_tokens}, or max_prompt_length)")
            elif ids[:len(prefix)] != prefix or ids[len(ids) - len(suffix):] != suffix:
                reason, detail = "content_span_mismatch", (
                    "the transcript changes the template's tokens around it; put whitespace "
                    f"around '{{content}}' in {instr.template!r}")
            if reason is None:
                items.append(Item(index, uid, ids, instr, prefix, suffix))
            else:
                skipped.append({"id": uid, "family": instr.family, "reason": reason, "detail": detail})
    return items, skipped


def plan_shards(items: list[Item], n_records: int, shard_size: int) -> list[list[Item]]:
    """Shard k = the items whose dataset index is in [k * shard_size, (k + 1) * shard_size)."""
    shards = [[] for _ in range(max(1, math.ceil(n_records / shard_size)))]
    for item in items:
        shards[item.index // shard_size].append(item)
    return shards


def shard_batches(shard: list[Item], batch_size: int) -> list[list[Item]]:
    """Length-sorted (stable) batches: rows of one batch have similar prompt lengths."""
    ordered = sorted(shard, key=lambda it: len(it.prompt))
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


# ------------------------------------------------------------------ files
def _jsonl(records) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _read_jsonl(path: str) -> list[dict]:
    with prov.gfile().GFile(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def shard_path(out_dir: str, k: int, n: int) -> str:
    return os.path.join(out_dir, SHARDS_DIR, f"shard-{k:05d}-of-{n:05d}.jsonl")


def load_responses(out_dir: str) -> dict:
    """``{id: [data.input.Target, ...]}`` of a finished run (one per answered instruction),
    for ``data.input.SpeechInput(responses=...)``."""
    from audiochat_jax.data.input import load_responses as load_jsonl
    path = os.path.join(out_dir, RESPONSES_FILE)
    if not prov.gfile().exists(path):
        raise FileNotFoundError(f"{path} not found: the response run in {out_dir} has not finished; "
                                "rerun `python -m audiochat_jax.responses` with the same config")
    return load_jsonl(path)


def summarize(records: list[dict], skipped: list[dict], n_shards: int, n_inputs: int) -> dict[str, Any]:
    """Counts and lengths of a finished run (``length`` counts the EOS when present)."""
    lengths = np.array([r["length"] for r in records] or [0])
    prompts = np.array([r["prompt_length"] for r in records] or [0])
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    by_family: dict[str, int] = {}
    for r in records:
        by_family[r.get("family", DEFAULT_FAMILY)] = by_family.get(r.get("family", DEFAULT_FAMILY), 0) + 1
    return {
        "records": n_inputs,
        "responses": len(records), "responses_by_family": by_family,
        "skipped": len(skipped), "skipped_by_reason": dict(sorted(reasons.items())),
        "truncated": sum(r["truncated"] for r in records),
        "empty_responses": sum(r["length"] == 1 and not r["truncated"] for r in records),
        "response_length": {"mean": round(float(lengths.mean()), 3), "max": int(lengths.max()),
                            "min": int(lengths.min())},
        "prompt_length": {"mean": round(float(prompts.mean()), 3), "max": int(prompts.max())},
        "shards": n_shards,
    }


# ------------------------------------------------------------------ the job
def _snapshot(c: ResponsesConfig) -> tuple[list[tuple[str, str]], list[dict]]:
    """Process 0 reads the dataset once into OUT/transcripts.jsonl; every host reads that."""
    fs, shards_dir = prov.gfile(), os.path.join(c.out_dir, SHARDS_DIR)
    snapshot, malformed = os.path.join(c.out_dir, TRANSCRIPTS_FILE), os.path.join(c.out_dir, MALFORMED_FILE)
    if jax.process_index() == 0:
        fs.makedirs(shards_dir)
        for name in fs.listdir(shards_dir):
            if ".tmp-" in name:  # left by a crash mid-write; never a finished shard
                fs.remove(os.path.join(shards_dir, name))
        if not fs.exists(snapshot):
            records, bad = read_transcripts(c.dataset_dir, c.split)
            prov.write_atomic(malformed, _jsonl(bad))
            prov.write_atomic(snapshot, _jsonl({"id": i, "text": t} for i, t in records))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("audiochat_jax.responses:snapshot")
    return [(r["id"], r["text"]) for r in _read_jsonl(snapshot)], _read_jsonl(malformed)


def _log_skipped(skipped: list[dict], total: int, out_dir: str) -> None:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
        if counts[s["reason"]] <= 10:
            logging.warning("responses: skipped %s: %s (%s)", s["id"], s["reason"], s["detail"])
    if skipped:
        logging.warning("responses: %d of %d records skipped %s (all listed in %s)", len(skipped),
                        total, counts, os.path.join(out_dir, SKIPPED_FILE))


def _finished_shards(out: str, shards: list[list[Item]]) -> np.ndarray:
    """[n_shards] int32, 1 = its file exists (complete: files appear by rename) and holds the
    plan's ids. Process 0 looks; every host gets its answer, so all skip the same shards."""
    n, done = len(shards), np.zeros(len(shards), np.int32)
    if jax.process_index() == 0:
        for k, shard in enumerate(shards):
            if prov.gfile().exists(shard_path(out, k, n)):
                have = [(r["id"], r.get("family", DEFAULT_FAMILY)) for r in _read_jsonl(shard_path(out, k, n))]
                if have != [(it.id, it.instruction.family) for it in shard]:
                    raise ValueError(f"{shard_path(out, k, n)} holds other ids than shard {k} of the "
                                     f"plan; {out} was written by a different plan: use a new out_dir")
                done[k] = 1
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        done = np.asarray(multihost_utils.broadcast_one_to_all(done))
    return done


def run(config: ResponsesConfig, *, max_shards: int | None = None, progress: bool = True) -> dict:
    """Answers every transcript, shard by shard; returns the summary (process 0's is complete).

    ``max_shards``: stop after computing that many shards in this call (a time-boxed job;
    rerun to continue). The return value then has ``"complete": False``.
    """
    from tqdm import tqdm

    from audiochat_jax.models.model_dir import read_model_config
    from audiochat_jax.models.llama import LlamaConfig
    from audiochat_jax.parallel import sharding
    from audiochat_jax.text.tokenizer import Tokenizer

    c, out, lead = config, config.out_dir, jax.process_index() == 0
    tok = Tokenizer(c.tokenizer)
    llm_meta = read_model_config(c.llm_dir, "llama")
    llm_cfg = LlamaConfig.from_dict(llm_meta["config"])
    if tok.vocab_size > llm_cfg.vocab_size:
        raise ValueError(f"config.responses.tokenizer={c.tokenizer} has {tok.vocab_size} pieces but "
                         f"the LLM in {c.llm_dir} only {llm_cfg.vocab_size}; pass its own tokenizer")
    # Validates the instructions (clear errors); the default one's parts go into provenance.
    pool = instruction_pool(c)
    prefix, suffix = Instruction(DEFAULT_FAMILY, c.instruction).parts(tok, c.system or None)
    mesh = sharding.make_mesh(c.mesh_shape)
    ways = sharding.batch_shards(mesh)
    if c.batch_size % ways:
        raise ValueError(f"config.responses.batch_size={c.batch_size} cannot be split over the "
                         f"mesh's {ways} data x fsdp devices; make it a multiple of {ways}")

    # ---- input and plan: the same on every host.
    records, malformed = _snapshot(c)
    items, skipped = make_items(records, tok, c, llm_cfg.max_seq_len)
    skipped = malformed + skipped
    shards = plan_shards(items, len(records), c.shard_size)
    n = len(shards)

    # ---- provenance: written on the first run, checked on every rerun.
    if lead:
        with prov.gfile().GFile(os.path.join(out, TRANSCRIPTS_FILE), "rb") as f:
            snapshot_sha = hashlib.sha256(f.read()).hexdigest()
        plan_sha = hashlib.sha256(json.dumps([[it.id for it in s] for s in shards]).encode()).hexdigest()
        prov.write_or_check(os.path.join(out, PROVENANCE_FILE), {
            "format": FORMAT,
            "llm": {"dir": os.path.abspath(c.llm_dir), "config": llm_meta["config"],
                    "params_sha256": prov.fingerprint_dir(os.path.join(c.llm_dir, "params"))},
            "tokenizer": {"path": os.path.abspath(c.tokenizer), "sha256": prov.sha256_file(c.tokenizer),
                          "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
                          "pad_id": tok.pad_id},
            "prompt": {"template": "llama2_chat (text/chat_template.encode_dialog)",
                       "system": c.system, "instruction": c.instruction,
                       "audio_prefix_ids": prefix, "audio_suffix_ids": suffix,
                       "instructions": ({"path": os.path.abspath(c.instructions),
                                         "sha256": prov.sha256_file(c.instructions)}
                                        if c.instructions else None),
                       "families": instructions_lib.families(pool),
                       "heldout_families": list(instructions_lib.parse_names(c.heldout_families)),
                       "per_utterance": c.per_utterance},
            "decoding": {k: getattr(c, k) for k in ("max_new_tokens", "temperature", "top_p", "seed",
                                                    "batch_size", "length_multiple",
                                                    "max_prompt_length")},
            "data": {"dataset_dir": c.dataset_dir, "split": c.split, "records": len(records),
                     "transcripts_sha256": "sha256:" + snapshot_sha, "shard_size": c.shard_size,
                     "shards": n, "plan_sha256": "sha256:" + plan_sha},
        }, process_count=jax.process_count(), mesh_shape=dict(mesh.shape))
        prov.write_atomic(os.path.join(out, SKIPPED_FILE), _jsonl(skipped))
        _log_skipped(skipped, len(records) + len(malformed), out)

    # ---- generate the unfinished shards (the LLM is loaded only if one is left).
    done = _finished_shards(out, shards)
    todo = [k for k in range(n) if not done[k]][:max_shards]
    if todo:
        llm_cfg, params = load_llm(c.llm_dir, mesh)
    bar = tqdm(total=len(items), initial=sum(len(s) for k, s in enumerate(shards) if done[k]),
               unit="utt", desc="responses", disable=not (progress and lead))
    for k in todo:
        answers = {}  # keyed by the item's position in its shard
        position = {id(it): j for j, it in enumerate(shards[k])}
        for b, batch in enumerate(shard_batches(shards[k], c.batch_size)):
            longest = max(len(it.prompt) for it in batch)
            width = min(-(-longest // c.length_multiple) * c.length_multiple,
                        llm_cfg.max_seq_len - c.max_new_tokens)
            # Keyed by (shard, batch), not by call order: a resumed run samples the same.
            key = jax.random.fold_in(jax.random.fold_in(jax.random.key(c.seed), k), b)
            replies = generate_batch(llm_cfg, params, [it.prompt for it in batch], mesh=mesh,
                                     batch_size=c.batch_size, width=width, pad_id=tok.pad_id,
                                     eos_id=tok.eos_id, max_new_tokens=c.max_new_tokens, rng=key,
                                     temperature=c.temperature, top_p=c.top_p)
            answers.update(zip((position[id(it)] for it in batch), replies))
            bar.update(len(batch))
        if lead:
            prov.write_atomic(shard_path(out, k, n), _jsonl(
                {"id": it.id, "family": it.instruction.family, "instruction": it.instruction.to_dict(),
                 "prefix_ids": it.prefix, "suffix_ids": it.suffix, "response_ids": ids,
                 "length": len(ids), "truncated": ids[-1] != tok.eos_id, "prompt_length": len(it.prompt),
                 "response_text": tok.decode([t for t in ids if t != tok.eos_id])}
                for it, ids in ((it, answers[j]) for j, it in enumerate(shards[k]))))
        done[k] = 1
    bar.close()
    if not done.all():
        return {"complete": False, "shards": n, "shards_done": int(done.sum())}
    if not lead:
        return {"complete": True, "shards": n}

    # ---- all shards present: merge and summarise (cheap; redone on every finished rerun).
    merged = [r for k in range(n) for r in _read_jsonl(shard_path(out, k, n))]
    summary = {"complete": True, **summarize(merged, skipped, n, len(records) + len(malformed))}
    prov.write_atomic(os.path.join(out, RESPONSES_FILE), _jsonl(merged))
    prov.write_atomic(os.path.join(out, SUMMARY_FILE), json.dumps(summary, indent=2))
    return summary
