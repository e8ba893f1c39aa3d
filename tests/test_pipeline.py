"""The mini world end to end: the real pipeline CLI at smoke size, every stage, cached.

One run of ``python -m audiochat_jax.pipeline --config configs/mini.py:smoke`` into
tmp_path (a few minutes on 2 cores), then: every stage left its outputs and its DONE.json;
a rerun skips every stage and touches nothing; alignment made the audio prompt a better
prompt than the untrained projector (the align task's own held-out eval, both numbers from
the same code on the same utterances).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from audiochat_jax.workflow import layout, stages  # noqa: E402

# Aligned audio-prompt perplexity must be at most half the untrained projector's on the
# held-out test_seen / test_unseen utterances. Measured at smoke scale (2-layer LLM, 200 lm
# steps, 10 align steps): 13.8 -> 3.9 (ratio 0.28); the text-prompt perplexity (1.62) is
# the floor.
MARGIN = 0.5
RUN = layout.STAGES
# The smoke run trains on the world's instruction pool (off in the default mini world), so
# the pool's path through every stage is exercised too.
POOL = "--config.pipeline.instruction_pool=true"


def _cli(*args, timeout=1200):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "audiochat_jax.pipeline", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("mini") / "work")
    r = _cli("--config", "configs/mini.py:smoke", "--workdir", work, POOL)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return work, r.stdout


def test_every_stage_writes_its_outputs_and_marker(smoke_run):
    work, out = smoke_run
    for stage in RUN:
        with open(os.path.join(work, stage, layout.MARKER)) as f:
            marker = json.load(f)
        assert marker["stage"] == stage and marker["seconds"] >= 0
        assert f"---- {stage} done in" in out
    p = layout.paths(work)
    for path in (p["lm_train"], p["lm_eval"], p["sentences"], p["tokenizer"],
                 os.path.join(p["lm_model"], "config.json"),
                 os.path.join(p["speech_data"], "dataset_info.json"),
                 os.path.join(p["ctc_model"], "config.json"),
                 os.path.join(p["responses"].format(split="train"), "responses.jsonl"),
                 os.path.join(p["align_model"], "config.json"),
                 os.path.join(p["align_untrained"], "model", "config.json")):
        assert os.path.exists(path), path
    # Every synthesised training utterance got a response from the frozen LLM in every
    # family of the world's instruction pool but the held-out ones (per_utterance=0: all).
    with open(os.path.join(p["speech"], "synth_config.json")) as f:
        counts = json.load(f)["counts"]
    with open(os.path.join(p["responses"].format(split="train"), "responses.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len({r["id"] for r in records}) == counts["train"]
    assert {r["family"] for r in records} == {"respond", "repeat", "history"}
    with open(os.path.join(p["align_model"], "config.json")) as f:
        meta = json.load(f)
    assert meta["families"] == ["history", "repeat", "respond"]
    assert meta["heldout_families"] == ["translate", "rephrase"]
    with open(os.path.join(work, "lm", layout.MARKER)) as f:
        qa = json.load(f)["summary"]["text_qa"]
    # Overall and per kind of question (the smoke world asks facts and arithmetic).
    assert set(qa) == {f"{s}{k}" for s in ("heldout", "train") for k in ("", "/fact", "/arithmetic")}
    assert all(0 <= v <= 1 for v in qa.values())
    for name in ("report.md", "results.json"):
        assert os.path.exists(os.path.join(p["evaluate"], name)), name
    with open(os.path.join(p["evaluate"], "results.json")) as f:
        families = json.load(f)["families"]["families"]
    assert {f for f, v in families.items() if v["heldout"]} == {"translate", "rephrase"}
    assert set(families["repeat"]["wer"]) >= {"text", "audio", "cascade:ctc"}


def test_study_tabulates_every_metric_per_seed_with_mean_and_sd(smoke_run):
    from audiochat_jax import study
    work, _ = smoke_run
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "audiochat_jax.study", "--config", "configs/mini.py:smoke",
                        "--workdir", work, "--seeds", "0,1", POOL, "--config.align.total_steps=4",
                        "--config.eval.sweeps=()"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    root = os.path.join(work, "studies", "pipeline-instruction_pool-true_align-total_steps-4_eval-sweeps-")
    with open(os.path.join(root, "study.json")) as f:
        record = json.load(f)
    assert record["seeds"] == [0, 1] and record["overrides"] == [POOL, "--config.align.total_steps=4",
                                                                 "--config.eval.sweeps=()"]
    qa = record["metrics"]["qa/audio"]
    assert set(qa["seeds"]) == {"0", "1"} and qa["n"] == 2
    values = list(qa["seeds"].values())
    assert qa["mean"] == pytest.approx(sum(values) / 2)
    assert qa["sd"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    for key in ("bleu/audio", "ppl_qa/audio", "repeat/wer/audio", "translate/agrees/audio"):
        assert key in record["metrics"], key
    for seed in (0, 1):  # each seed its own aligned model and report
        assert os.path.exists(os.path.join(root, f"seed_{seed}", "align", "model", "config.json"))
        assert os.path.exists(os.path.join(root, f"seed_{seed}", "evaluate", "report.md"))
    assert "mean ± sd" in open(os.path.join(root, "study.md")).read()
    # the shared stages were reused, not rerun
    assert "==== study" in r.stdout and "lm: done already" in r.stdout and "] lm ====" not in r.stdout
    md = study.compare(work, [os.path.basename(root)])
    assert "| qa/audio |" in md


def test_rerun_skips_every_stage(smoke_run):
    work, _ = smoke_run
    before = {s: os.path.getmtime(os.path.join(work, s, layout.MARKER)) for s in RUN}
    r = _cli("--config", "configs/mini.py:smoke", "--workdir", work, POOL, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in RUN:
        assert f"{stage}: done already" in r.stdout
    assert "====" not in r.stdout  # no stage banner: nothing ran
    after = {s: os.path.getmtime(os.path.join(work, s, layout.MARKER)) for s in RUN}
    assert after == before


def test_aligned_model_beats_the_untrained_projector(smoke_run):
    work, _ = smoke_run
    with open(os.path.join(work, "align", layout.MARKER)) as f:
        summary = json.load(f)["summary"]
    aligned, untrained = summary["eval"], summary["untrained_eval"]
    for split in ("test_seen", "test_unseen"):
        a, u = aligned[f"{split}/audio_ppl"], untrained[f"{split}/audio_ppl"]
        assert a <= MARGIN * u, (split, a, u)
        # The text prompt does not depend on the audio path: identical before and after.
        assert aligned[f"{split}/text_ppl"] == pytest.approx(untrained[f"{split}/text_ppl"], rel=1e-5)


def test_help_and_bad_stage_names():
    r = _cli("--help", timeout=120)
    # absl's --help prints the usage to stdout and exits 1 (as `python -m audiochat_jax.train`).
    assert r.returncode in (0, 1) and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "Runs the whole method" in r.stdout
    for stage in layout.STAGES:
        assert stage in r.stdout
    assert "--force" in r.stdout and "--only" in r.stdout
    with pytest.raises(ValueError, match="unknown stage.*'lmm'.*corpus, tokenizer"):
        stages.parse_stages("corpus,lmm", "only")
