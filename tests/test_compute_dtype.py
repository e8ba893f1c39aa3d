"""Compute dtypes: ``dtype="auto"`` picks the faster one for the backend (bfloat16 on
accelerators and on CPUs with native bf16 dots, float32 on other CPUs); a forced dtype is
used as given; on CPU a bfloat16 dot takes XLA's fast form (float32 result, then cast) with
the numbers of a float32-accumulated bfloat16 product."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiochat_jax.models import llama, precision
from audiochat_jax.models.llama import Llama, LlamaConfig, auto_compute_dtype, compute_dtype
from llama_fixtures import random_llama_params

TINY = LlamaConfig(vocab_size=61, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=64,
                   param_dtype="float32")


@pytest.fixture(autouse=True)
def _fresh_cache():
    auto_compute_dtype.cache_clear()
    yield
    auto_compute_dtype.cache_clear()


def test_auto_is_bfloat16_on_accelerators_and_on_cpus_with_bf16_dots(monkeypatch):
    assert auto_compute_dtype("gpu") == auto_compute_dtype("tpu") == "bfloat16"
    monkeypatch.setattr(llama, "cpu_has_bf16_dots", lambda: True)
    assert auto_compute_dtype("cpu") == "bfloat16"
    auto_compute_dtype.cache_clear()
    monkeypatch.setattr(llama, "cpu_has_bf16_dots", lambda: False)
    assert auto_compute_dtype("cpu") == "float32"
    assert compute_dtype("auto") == jnp.float32  # this test runs on the CPU backend
    assert LlamaConfig(**{**TINY.to_dict(), "dtype": "auto"}).dtype == "auto" == LlamaConfig(
        vocab_size=8, dim=8, n_layers=1, n_heads=2, n_kv_heads=2, ffn_dim=8).dtype


@pytest.mark.parametrize("forced", ["float32", "bfloat16"])
def test_a_forced_dtype_is_used_whatever_auto_would_pick(monkeypatch, forced):
    monkeypatch.setattr(llama, "cpu_has_bf16_dots", lambda: forced == "float32")  # auto = the other one
    cfg = TINY.replace(dtype=forced)
    params = random_llama_params(cfg, seed=0)
    tokens = np.arange(14, dtype=np.int32).reshape(2, 7) % 61
    h = Llama(cfg).apply({"params": params}, tokens, positions=np.tile(np.arange(7), (2, 1)),
                         mask=np.ones((2, 7), bool), method=Llama.hidden_states)
    assert h.dtype == jnp.dtype(forced)
    with pytest.raises(ValueError, match="dtype='int8'.*auto"):
        TINY.replace(dtype="int8")
    with pytest.raises(ValueError, match="param_dtype='auto'"):
        TINY.replace(param_dtype="auto")


def test_cpu_bf16_dot_takes_the_float32_result_form_with_the_same_numbers():
    rng = np.random.default_rng(0)
    rows = precision.SMALL_ROWS + 16  # a matrix-matrix product: the bfloat16 kernel's form
    x = jnp.asarray(rng.standard_normal((2, rows // 2, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((32, 48)), jnp.float32)
    f = jax.jit(lambda x, w: precision.einsum("bld,df->blf", x, w, jnp.bfloat16))
    dots = [line for line in f.lower(x, w).as_text().splitlines() if "dot_general" in line]
    assert len(dots) == 1 and f"xbf16>, tensor<32x48xbf16>) -> tensor<2x{rows // 2}x48xf32>" in dots[0], dots
    got = f(x, w)
    assert got.dtype == jnp.bfloat16
    ref = jnp.einsum("bld,df->blf", x.astype(jnp.bfloat16).astype(jnp.float32),
                     w.astype(jnp.bfloat16).astype(jnp.float32)).astype(jnp.bfloat16)
    # float32 accumulation of the same bf16 products, rounded once: equal up to summation order.
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref, np.float32), rtol=2 ** -7, atol=1e-6)


def test_cpu_bf16_dot_with_few_rows_runs_in_float32_on_the_weights_as_stored():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 5, 32)), jnp.float32)  # 15 rows: a decoding step
    w = jnp.asarray(rng.standard_normal((32, 48)), jnp.bfloat16)  # weights stored in bfloat16
    f = jax.jit(lambda x, w: precision.einsum("bld,df->blf", x, w, jnp.bfloat16))
    dots = [line for line in f.lower(x, w).as_text().splitlines() if "dot_general" in line]
    assert len(dots) == 1 and "(tensor<3x5x32xf32>, tensor<32x48xf32>) -> tensor<3x5x48xf32>" in dots[0], dots
    got = f(x, w)
    assert got.dtype == jnp.bfloat16
    # x is not rounded to bfloat16 first: the reference is the float32 product, rounded once.
    ref = np.einsum("bld,df->blf", np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=2 ** -7, atol=1e-5)
