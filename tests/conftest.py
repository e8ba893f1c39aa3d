"""Test-wide environment: 8 fake CPU devices for sharding tests, no hub, quiet TF, one XLA
compilation cache for the session.

These must be set before jax / tensorflow / transformers are imported anywhere.
"""
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread per xdist worker keeps 2 workers from fighting over 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# One XLA compilation cache for the whole session (JAX's persistent cache; the xdist workers
# and the CLI subprocesses inherit the variable): the CLI tests compile, in subprocesses, the
# steps an earlier run already compiled. Measured alone on 2 cores: the SIGKILL-resume test
# took 251 s without, 163 s with. Made by the first process that loads this file (pytest's
# controller) and removed when its session ends.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="audiochat_jax_test_xla_cache_")
    _CACHE_OWNER = True
else:
    _CACHE_OWNER = False

import pytest  # noqa: E402


def pytest_sessionfinish(session):
    if _CACHE_OWNER:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def n_devices():
    import jax
    return jax.device_count()


# README runs the suite with ``-n 2 --dist loadscope --no-loadscope-reorder``: each module
# runs on one worker, so its module-scoped fixtures (a trained toy world, a pipeline run) are
# built once instead of once per worker, and modules are handed out in collection order.
# The slowest modules go first, so the two workers do not end on one long module.
SLOW_MODULES_FIRST = ("test_pipeline.py", "test_align_resume.py", "test_multiprocess.py",
                      "test_align_step.py", "test_wav2vec2_align.py", "test_train_ctc.py",
                      "test_align_ctc.py", "test_train_resume.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))
