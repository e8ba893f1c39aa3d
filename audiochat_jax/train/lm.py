"""``lm``: train a Llama on chat dialogs, loss on the assistant tokens only.

The mini world's LLM (d=128, 4 layers: it learns the templated world in minutes on 2
cores); the same code trains any LlamaConfig. Input: a JSONL file of dialogs, one per line::

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...],
     "system": null}

(``save_dialogs`` writes it, e.g. from ``data.mini_world.MiniWorld(...).lm_dialogs()``) and a
sentencepiece ``tokenizer.model``. Each dialog is tokenised with the Llama-2 chat template
(text/chat_template.py); the targets are the tokens of every assistant turn — the reply and
its ``</s>`` (``DialogTokens.assistant_spans``) — so the model learns to answer, not to
predict the user's words. Sequences are padded to ``config.lm.seq_len``, or with
``config.lm.pack`` packed several to a row of that length (``segment_ids`` keep them apart);
longer ones are truncated, counted and reported at start-up.

Batches (``[batch, seq_len]``): tokens int32, positions int32, mask bool (real tokens),
targets int32 (the next token), weights float32 (1 on assistant targets), and with packing
segment_ids int32 (1, 2, ... per dialog in the row; 0 = padding).
The exported model directory (kind "llama") holds the params, the LlamaConfig and a copy of
the tokenizer (``tokenizer.model``), so ``python -m audiochat_jax.generate`` can chat with it.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from audiochat_jax.models import model_dir
from audiochat_jax.models.llama import Llama, LlamaConfig, init_params, scanned_flops_uncounted
from audiochat_jax.parallel import sharding
from audiochat_jax.text.chat_template import encode_dialog
from audiochat_jax.text.tokenizer import Tokenizer
from audiochat_jax.train import metrics, tasks


def task_config() -> ml_collections.ConfigDict:
    """The ``config.lm`` section. ``model`` holds LlamaConfig fields; ``vocab_size=0`` means
    "the tokenizer's size"."""
    placeholder = ml_collections.config_dict.placeholder
    return ml_collections.ConfigDict(dict(
        dialogs=placeholder(str),       # JSONL of training dialogs
        eval_dialogs="",                # JSONL of held-out dialogs ("" = no eval)
        tokenizer=placeholder(str),     # sentencepiece .model
        seq_len=64,
        pack=False,                     # several dialogs per row of seq_len (segment-masked)
        eval_batches=4,                 # eval batches of config.batch_size (0 = all)
        model=ml_collections.ConfigDict(dict(
            vocab_size=0, dim=128, n_layers=4, n_heads=4, n_kv_heads=4, ffn_dim=384,
            max_seq_len=256, rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=False,
            dtype="float32", param_dtype="float32", remat_policy="none", scan_layers=False,
            attention_impl="xla")),
    ))


def save_dialogs(path: str, dialogs: Iterable) -> int:
    """Writes dialogs (``mini_world.Dialog`` or ``{"messages", "system"}`` dicts) as JSONL."""
    n = 0
    with open(path, "w") as f:
        for d in dialogs:
            messages = d["messages"] if isinstance(d, dict) else d.messages
            system = d.get("system") if isinstance(d, dict) else d.system
            f.write(json.dumps({"messages": list(messages), "system": system}) + "\n")
            n += 1
    return n


def load_dialogs(path: str) -> list[dict]:
    """Reads a dialog JSONL file; a malformed line is an error naming the file and line."""
    out = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                if not isinstance(d.get("messages"), list) or not d["messages"]:
                    raise ValueError("needs a non-empty 'messages' list")
            except (ValueError, AttributeError) as e:
                raise ValueError(f"{path}:{i}: not a dialog ({e}); each line must be "
                                 '{"messages": [{"role": ..., "content": ...}, ...], "system": ...}') from e
            out.append(d)
    if not out:
        raise ValueError(f"{path}: no dialogs; write them with audiochat_jax.train.lm.save_dialogs")
    return out


def tokenize_dialogs(tokenizer: Tokenizer, dialogs: list[dict], seq_len: int, where: str):
    """-> ``(ids [n, seq_len + 1] int32, is_target [n, seq_len + 1] bool, lengths [n],
    n_truncated)``; rows padded with ``tokenizer.pad_id``."""
    n = len(dialogs)
    ids = np.full((n, seq_len + 1), tokenizer.pad_id, np.int32)
    is_target = np.zeros((n, seq_len + 1), bool)
    lengths = np.zeros((n,), np.int32)
    truncated = 0
    for i, d in enumerate(dialogs):
        try:
            tokens = encode_dialog(tokenizer, d["messages"], system=d.get("system"))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{where}: dialog {i}: {e}") from e
        row = np.asarray(tokens.ids[: seq_len + 1], np.int32)
        truncated += len(tokens.ids) > seq_len + 1
        ids[i, : len(row)] = row
        lengths[i] = len(row)
        for start, end in tokens.assistant_spans:
            is_target[i, start:end] = True
    return ids, is_target, lengths, truncated


def pack_rows(order: np.ndarray, lengths: np.ndarray, seq_len: int) -> list[np.ndarray]:
    """Next-fit packing: dialogs in ``order`` fill rows of ``seq_len`` (token, target) pairs;
    a dialog of ``lengths[i]`` ids gives ``lengths[i] - 1`` pairs. -> dialog indices per row."""
    rows, row, used = [], [], 0
    for i in order:
        need = int(lengths[i]) - 1
        if row and used + need > seq_len:
            rows.append(np.asarray(row))
            row, used = [], 0
        row.append(i)
        used += need
    if row:
        rows.append(np.asarray(row))
    return rows


class DialogBatches:
    """Index-based iterator over shuffled dialogs: batch ``b`` takes global rows
    ``b*B ... b*B+B-1`` of the endless stream of per-epoch permutations seeded by
    ``(seed, epoch)``, so the state is one integer and resume is exact. Each host yields its
    own ``B / process_count`` rows.

    ``pack=False``: one dialog per row. ``pack=True``: each epoch's permutation is packed
    (``pack_rows``) into rows of ``seq_len`` tokens holding several dialogs, told apart by
    ``segment_ids`` (1, 2, ...; 0 = padding) with positions restarting per dialog — the mini
    world's dialogs average ~30 of 96 tokens, so packing does ~3x less padding work."""

    def __init__(self, ids, is_target, lengths, batch_size: int, seed: int, shuffle: bool = True,
                 pack: bool = False):
        self.ids, self.is_target, self.lengths = ids, is_target, lengths
        self.batch_size, self.seed, self.shuffle, self.pack = batch_size, seed, shuffle, pack
        self.index = 0
        self._epochs: dict[int, list[np.ndarray]] = {}   # epoch -> rows (dialog indices each)
        self._counts: dict[int, int] = {}                # epoch -> number of rows (kept)
        hosts = jax.process_count()
        if batch_size % hosts:
            raise ValueError(f"config.batch_size={batch_size} is not divisible by {hosts} hosts")
        per = batch_size // hosts
        self.rows = slice(jax.process_index() * per, (jax.process_index() + 1) * per)

    def __iter__(self):
        return self

    def _epoch_rows(self, epoch: int) -> list[np.ndarray]:
        if epoch not in self._epochs:
            n = len(self.ids)
            order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                     else np.arange(n))
            seq_len = self.ids.shape[1] - 1
            rows = pack_rows(order, self.lengths, seq_len) if self.pack else list(order[:, None])
            self._epochs = {k: v for k, v in self._epochs.items() if k >= epoch - 1}  # bounded
            self._epochs[epoch] = rows
            self._counts[epoch] = len(rows)
        return self._epochs[epoch]

    def _row(self, position: int) -> np.ndarray:
        """Dialog indices of global row ``position`` of the stream (epochs one after another)."""
        epoch = 0
        while True:
            size = self._counts[epoch] if epoch in self._counts else len(self._epoch_rows(epoch))
            if position < size:
                return self._epoch_rows(epoch)[position]
            position -= size
            epoch += 1

    def __next__(self) -> dict[str, np.ndarray]:
        start = self.index * self.batch_size
        self.index += 1
        seq_len = self.ids.shape[1] - 1
        b = self.rows.stop - self.rows.start
        out = {"tokens": np.zeros((b, seq_len), np.int32), "targets": np.zeros((b, seq_len), np.int32),
               "positions": np.zeros((b, seq_len), np.int32), "mask": np.zeros((b, seq_len), bool),
               "weights": np.zeros((b, seq_len), np.float32)}
        if self.pack:
            out["segment_ids"] = np.zeros((b, seq_len), np.int32)
        for r, p in enumerate(range(start + self.rows.start, start + self.rows.stop)):
            at = 0
            for k, i in enumerate(self._row(p)):
                n = int(self.lengths[i]) - 1
                sl = slice(at, at + n)
                out["tokens"][r, sl] = self.ids[i, :n]
                out["targets"][r, sl] = self.ids[i, 1:n + 1]
                out["weights"][r, sl] = self.is_target[i, 1:n + 1]
                out["positions"][r, sl] = np.arange(n)
                out["mask"][r, sl] = True
                if self.pack:
                    out["segment_ids"][r, sl] = k + 1
                at += n
        return out

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


def lm_loss(model: Llama, variables, batch):
    """Mean cross-entropy over assistant targets; aux: accuracy, tokens_sum."""
    logits = model.apply(variables, batch["tokens"], positions=batch["positions"],
                         mask=batch["mask"], segment_ids=batch.get("segment_ids"))
    weights = batch["weights"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    total = jnp.sum(weights)
    denom = jnp.maximum(total, 1.0)
    correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32)
    return jnp.sum(ce * weights) / denom, {"accuracy": jnp.sum(correct * weights) / denom,
                                           "tokens_sum": total}


@tasks.register("lm")
def lm_task(config, mesh) -> tasks.Task:
    cfg = config.lm
    tokenizer = Tokenizer(cfg.tokenizer)
    model_fields = cfg.model.to_dict()
    if model_fields["vocab_size"] == 0:
        model_fields["vocab_size"] = tokenizer.vocab_size
    if model_fields["vocab_size"] < tokenizer.vocab_size:
        raise ValueError(f"config.lm.model.vocab_size={model_fields['vocab_size']} is smaller than the "
                         f"tokenizer {cfg.tokenizer} ({tokenizer.vocab_size} pieces); use 0 for its size")
    llama_cfg = LlamaConfig.from_dict(model_fields)
    model = Llama(llama_cfg)

    ids, is_target, lengths, truncated = tokenize_dialogs(
        tokenizer, load_dialogs(cfg.dialogs), cfg.seq_len, cfg.dialogs)
    metrics.log(f"lm: {len(ids)} dialogs from {cfg.dialogs}, {int(is_target.sum())} target tokens, "
                f"{truncated} truncated to seq_len={cfg.seq_len}"
                + (" (raise config.lm.seq_len to keep them whole)" if truncated else ""))
    if not is_target[:, 1:].any():
        raise ValueError(f"{cfg.dialogs}: no assistant tokens to train on (every dialog needs an "
                         "assistant turn within seq_len)")

    def init(rng):
        return {"params": init_params(llama_cfg, rng)}

    def loss(variables, frozen, batch, rng):
        return lm_loss(model, variables, batch)

    evaluate = None
    if cfg.eval_dialogs:
        eval_ids, eval_tgt, eval_len, _ = tokenize_dialogs(
            tokenizer, load_dialogs(cfg.eval_dialogs), cfg.seq_len, cfg.eval_dialogs)
        # Pad to whole batches with one-token rows that carry no targets (weight 0), so every
        # eval dialog counts exactly once.
        n_pad = -len(eval_ids) % config.batch_size
        eval_arrays = (np.concatenate([eval_ids, np.full((n_pad, eval_ids.shape[1]), tokenizer.pad_id, np.int32)]),
                       np.concatenate([eval_tgt, np.zeros((n_pad, eval_tgt.shape[1]), bool)]),
                       np.concatenate([eval_len, np.ones((n_pad,), np.int32)]))
        eval_step = jax.jit(lambda variables, batch: lm_loss(model, variables, batch))

        def evaluate(variables, frozen):
            n_batches = len(eval_arrays[0]) // config.batch_size
            if cfg.eval_batches:
                n_batches = min(n_batches, cfg.eval_batches)
            data = DialogBatches(*eval_arrays, config.batch_size, config.seed, shuffle=False)
            ce = correct = tokens = 0.0
            with jax.set_mesh(mesh), sharding.axis_rules():
                for _ in range(n_batches):
                    batch = tasks.device_batch(next(data), mesh)
                    mean_ce, aux = eval_step(variables, batch)
                    n = float(aux["tokens_sum"])
                    ce, correct, tokens = ce + float(mean_ce) * n, correct + float(aux["accuracy"]) * n, tokens + n
            tokens = max(tokens, 1.0)
            return {"loss": ce / tokens, "accuracy": correct / tokens,
                    "perplexity": float(np.exp(ce / tokens))}

    def export(variables, out_dir):
        os.makedirs(out_dir, exist_ok=True)
        shutil.copyfile(cfg.tokenizer, os.path.join(out_dir, "tokenizer.model"))
        model_dir.save_model_dir(out_dir, "llama", llama_cfg.to_dict(), variables["params"],
                                 tokenizer="tokenizer.model")

    def uncounted_flops(batch):  # MFU: XLA counts a scanned layer stack once
        rows, length = batch["tokens"].shape
        passes = 3 + (llama_cfg.remat_policy == "full")
        return scanned_flops_uncounted(llama_cfg, length, rows, passes)

    return tasks.Task(
        init=init, loss=loss, evaluate=evaluate, export=export, uncounted_flops=uncounted_flops,
        train_data=lambda: DialogBatches(ids, is_target, lengths, config.batch_size, config.seed,
                                         pack=cfg.pack))
