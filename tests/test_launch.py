"""Every launch script's --dry-run prints commands whose trainer flags parse against the
trainer's own absl flags and load an existing config (launch/ cannot drift from the code)."""
import os
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Parses argv with audiochat_jax.train's flags (its __main__ module, not run) and loads the
# config with every --config.key=value override applied; unknown flags/keys fail.
PARSE = r"""
import json, runpy, sys
from absl import flags
runpy.run_module("audiochat_jax.train.__main__", run_name="not_main")
for argv in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    sys.argv = ["train"] + argv  # config_flags defines the --config.* overrides from sys.argv
    flags.FLAGS(sys.argv)
    cfg = flags.FLAGS["config"].value
    assert cfg.task == "align", cfg.task
    print("OK", flags.FLAGS["workdir"].value, cfg.mesh_shape, cfg.batch_size, cfg.align.llm_dir)
"""

TRAIN_ARGS = ["--config", "configs/llama2_70b_chat.py:{slice}", "--config.align.llm_dir=W/llama2_70b_chat",
              "--config.align.encoder_dir=W/ctc/model", "--config.align.data_dir=W/tfds/librispeech_manual/1.0.0",
              "--config.align.responses=W/responses", "--config.total_steps=1000"]


def _dry_run(script, *args):
    out = subprocess.run(["bash", os.path.join(REPO, "launch", script), "--dry-run", *args],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [shlex.split(line) for line in out.splitlines() if line.strip()]


def _trainer_argv(words):
    """The argv after `-m audiochat_jax.distributed [--auto] audiochat_jax.train`."""
    i = words.index("audiochat_jax.distributed")
    j = words.index("audiochat_jax.train", i)
    return words[j + 1:]


def _check_parse(argvs):
    import json
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", PARSE, json.dumps(argvs)], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if line.startswith("OK")]


def test_tpu_pod_dry_run_creates_installs_and_runs_the_trainer_on_every_worker():
    cmds = _dry_run("tpu_pod.sh", "--tpu", "align", "--zone", "us-east5-a", "--accelerator", "v5p-128",
                    "--workdir", "gs://bucket/run", "--", *[a.format(slice="v5p-128") for a in TRAIN_ARGS])
    assert cmds[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert "--accelerator-type" in cmds[0] and cmds[0][cmds[0].index("--accelerator-type") + 1] == "v5p-128"
    run = cmds[-1]
    assert run[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in run
    remote = shlex.split(run[run.index("--command") + 1].split("&&", 1)[1])
    assert remote[1:4] == ["-m", "audiochat_jax.distributed", "--auto"]
    argv = _trainer_argv(remote)
    assert argv[:2] == ["--workdir", "gs://bucket/run"]
    ok = _check_parse([argv])
    assert ok == ["OK gs://bucket/run (4, 16, 1) 128 W/llama2_70b_chat"]


def test_gpu_slurm_dry_run_sets_the_coordinator_and_parses():
    cmds = _dry_run("gpu_slurm.sh", "--nodes", "2", "--workdir", "/shared/run", "--",
                    *[a.format(slice="2x8xh100") for a in TRAIN_ARGS])
    sbatch, srun = cmds
    assert sbatch[0] == "sbatch" and "--nodes=2" in sbatch and "--gpus-per-node=8" in sbatch
    assert srun[:3] == ["srun", "--ntasks=2", "--ntasks-per-node=1"]
    node = srun[-1]
    for var in ("JAX_COORDINATOR_ADDRESS=", "JAX_NUM_PROCESSES=$SLURM_NTASKS", "JAX_PROCESS_ID=$SLURM_PROCID"):
        assert var in node
    argv = _trainer_argv(shlex.split(node.split("&&", 1)[1]))
    assert _check_parse([argv]) == ["OK /shared/run (2, 8, 1) 32 W/llama2_70b_chat"]


@pytest.mark.parametrize("script,args", [
    ("tpu_pod.sh", ["--tpu", "t", "--zone", "z", "--workdir", "gs://b/r"]),   # no --accelerator
    ("gpu_slurm.sh", ["--workdir", "/r"]),                                      # no --nodes
    ("tpu_pod.sh", ["--tpu", "t", "--zone", "z", "--accelerator", "v4-32", "--workdir", "gs://b/r", "--bogus"]),
])
def test_launch_scripts_name_missing_or_unknown_options(script, args):
    out = subprocess.run(["bash", os.path.join(REPO, "launch", script), *args, "--dry-run", "--", "--config", "x"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "required" in out.stderr or "unknown option" in out.stderr


def test_readme_commands_reference_existing_scripts_and_configs():
    text = open(os.path.join(REPO, "launch", "README.md")).read()
    import re
    scripts = set(re.findall(r"launch/([\w.]+\.sh)", text))
    assert scripts == {"tpu_pod.sh", "gpu_slurm.sh"}
    for cfg in set(re.findall(r"configs/([\w]+\.py)", text)):
        assert os.path.exists(os.path.join(REPO, "configs", cfg)), cfg
