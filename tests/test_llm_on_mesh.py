"""data/llm_on_mesh.load_llm: the frozen LLM restored onto a mesh, in its saved layout or the
other one (scanned ``layers`` [n, ...] <-> unrolled ``layers_{i}``), and the align setting
that asks for it."""
import os

import jax
import numpy as np
import pytest

from audiochat_jax.models import model_dir
from audiochat_jax.data.llm_on_mesh import load_llm
from audiochat_jax.models.llama import Llama, LlamaConfig, init_params, stack_layer_params
from audiochat_jax.parallel import sharding

TINY = LlamaConfig(vocab_size=64, dim=32, n_layers=3, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32,
                   dtype="float32", param_dtype="float32")


@pytest.fixture(scope="module")
def llm_dirs(tmp_path_factory):
    """The same random LLM saved twice: unrolled and stacked."""
    root = tmp_path_factory.mktemp("llm_on_mesh")
    import flax.linen as nn
    unrolled = jax.tree.map(np.asarray, nn.unbox(init_params(TINY, jax.random.key(0))))
    stacked = jax.tree.map(np.asarray, stack_layer_params(unrolled, TINY.n_layers))
    dirs = {}
    for name, scan, params in (("unrolled", False, unrolled), ("stacked", True, stacked)):
        dirs[name] = str(root / name)
        model_dir.save_model_dir(dirs[name], "llama", TINY.replace(scan_layers=scan).to_dict(), params)
    return dirs, unrolled, stacked


def _logits(cfg, params):
    tokens = np.arange(2 * 10, dtype=np.int32).reshape(2, 10) % cfg.vocab_size
    positions = np.broadcast_to(np.arange(10, dtype=np.int32), (2, 10))
    return np.asarray(Llama(cfg).apply({"params": params}, tokens, positions=positions,
                                       mask=np.ones((2, 10), bool)))


@pytest.mark.parametrize("saved,wanted", [("stacked", False), ("unrolled", True)])
def test_load_llm_converts_the_saved_layout_on_the_mesh_and_keeps_the_numbers(llm_dirs, saved, wanted):
    dirs, unrolled, stacked = llm_dirs
    mesh = sharding.make_mesh((1, 4, 2))
    cfg, params = load_llm(dirs[saved], mesh, scan_layers=wanted)
    assert cfg.scan_layers is wanted
    expected = stacked if wanted else unrolled
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), want)  # a copy: bit for bit
    # Placed as a directory saved in that layout is: by the logical axis names.
    other = "stacked" if wanted else "unrolled"
    _, as_saved = load_llm(dirs[other], mesh)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(as_saved)):
        assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding, want.sharding)
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(params))
    # And the converted model computes what the saved one does.
    original = stacked if saved == "stacked" else unrolled
    np.testing.assert_allclose(_logits(cfg, jax.device_get(params)),
                               _logits(TINY.replace(scan_layers=saved == "stacked"), original),
                               rtol=1e-5, atol=1e-5)


def test_load_llm_without_a_layout_keeps_the_saved_one(llm_dirs):
    dirs, unrolled, _ = llm_dirs
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    for name, scan in (("unrolled", False), ("stacked", True)):
        cfg, params = load_llm(dirs[name], mesh)
        assert cfg.scan_layers is scan
        assert ("layers" in params) is scan and ("layers_0" in params) is not scan
    cfg, params = load_llm(dirs["unrolled"], mesh, scan_layers=False)  # asked for what is saved
    assert not cfg.scan_layers and "layers_0" in params


def test_align_llm_scan_layers_setting_and_the_slice_configs_link():
    from audiochat_jax.train.config_files import sibling
    from audiochat_jax.train import align, align_configs
    c = align_configs.mini_config()
    assert align.llm_scan_layers(c.align) is None  # "": the directory's layout
    for text, want in (("true", True), ("False", False), ("1", True), ("0", False), ("", None)):
        c.align.llm_scan_layers = text
        assert align.llm_scan_layers(c.align) is want
    c.align.llm_scan_layers = "yes"
    with pytest.raises(ValueError, match="config.align.llm_scan_layers='yes'"):
        align.llm_scan_layers(c.align)
    # A slice config sets it from config.llm.scan_layers, so --config.llm.scan_layers=false
    # unrolls the stacked checkpoint in training too (as it does in bench/align_step.py).
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    c = sibling(os.path.join(repo, "configs", "any.py"), "llama2_7b_chat.py", "8xh100")
    assert c.llm.scan_layers and align.llm_scan_layers(c.align) is True
    c.llm.scan_layers = False
    assert align.llm_scan_layers(c.align) is False
