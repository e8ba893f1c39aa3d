"""`convert llama`: HF (sharded safetensors + index) and Meta (2 TP shards, interleaved rotary
rows) sources give identical params, and the converted model equals transformers (1e-4 fp32)."""
import json
import os

import jax
import numpy as np
import pytest
import torch

from audiochat_jax.convert.llama import ConversionError, convert_hf, convert_meta, main
from audiochat_jax.models.model_dir import load_model_dir
from audiochat_jax.models.llama import Llama, LlamaConfig, stack_layer_params
from llama_fixtures import export_meta_checkpoint, make_hf_llama

TOL = 1e-4
F32 = dict(param_dtype="float32", dtype="float32")


@pytest.fixture(scope="module")
def gqa_checkpoints(tmp_path_factory):
    """GQA, odd vocab (67), rope_theta 5e4; HF in 5 safetensors shards, Meta in 2 TP shards."""
    root = tmp_path_factory.mktemp("llama_ckpt")
    hf, hf_dir = make_hf_llama(root / "hf", n_heads=4, n_kv_heads=2, vocab_size=67,
                               rope_theta=50000.0, max_shard_size="20KB")
    meta_dir = export_meta_checkpoint(hf, root / "meta", n_shards=2)
    return hf, hf_dir, meta_dir, root


def _tree_equal(a, b):
    ja, jb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    assert ja == jb, f"{ja} != {jb}"
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_hf_and_meta_sources_give_identical_params(gqa_checkpoints):
    _, hf_dir, meta_dir, _ = gqa_checkpoints
    assert os.path.exists(os.path.join(hf_dir, "model.safetensors.index.json"))
    cfg_hf, p_hf = convert_hf(hf_dir, **F32)
    cfg_meta, p_meta = convert_meta(meta_dir, **F32)
    # Meta's params.json does not record the context length (a runtime argument; 4096 for Llama-2)
    assert cfg_meta == cfg_hf.replace(max_seq_len=4096)
    assert (cfg_hf.n_kv_heads, cfg_hf.vocab_size, cfg_hf.rope_theta) == (2, 67, 50000.0)
    _tree_equal(p_hf, p_meta)


@pytest.mark.parametrize("source", ["hf", "meta"])
def test_cli_output_matches_transformers_logits(gqa_checkpoints, source):
    hf, hf_dir, meta_dir, root = gqa_checkpoints
    out = root / f"out_{source}"
    assert main(["--src", hf_dir if source == "hf" else meta_dir, "--out", str(out),
                 "--param_dtype", "float32", "--dtype", "float32"]) == 0
    meta, params = load_model_dir(str(out), "llama")
    cfg = LlamaConfig.from_dict(meta["config"])
    assert meta["source_format"] == source
    tokens = np.random.RandomState(0).randint(0, 67, (2, 11)).astype(np.int32)
    pos = np.tile(np.arange(11, dtype=np.int32), (2, 1))
    with torch.no_grad():
        ref = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    ours = jax.jit(Llama(cfg).apply)({"params": params}, tokens, positions=pos, mask=np.ones((2, 11), bool))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=TOL, rtol=0)


def test_scan_layers_output_is_the_stacked_unrolled_params(gqa_checkpoints):
    _, hf_dir, _, _ = gqa_checkpoints
    cfg, plain = convert_hf(hf_dir, **F32)
    cfg_s, stacked = convert_hf(hf_dir, scan_layers=True, **F32)
    assert cfg_s == cfg.replace(scan_layers=True)
    _tree_equal(stacked, stack_layer_params(plain, cfg.n_layers))


def test_bfloat16_storage_is_the_rounded_float32(gqa_checkpoints):
    _, _, meta_dir, _ = gqa_checkpoints
    _, p32 = convert_meta(meta_dir, **F32)
    _, p16 = convert_meta(meta_dir)  # default: bfloat16, as Llama-2 ships
    leaf = p16["layers_1"]["attn"]["k"]
    assert leaf.dtype == jax.numpy.bfloat16
    _tree_equal(p16, jax.tree_util.tree_map(lambda x: x.astype(jax.numpy.bfloat16), p32))


def test_tied_embeddings_checkpoint(tmp_path):
    hf, hf_dir = make_hf_llama(tmp_path / "hf", tie_embeddings=True, n_layers=1)
    cfg, params = convert_hf(hf_dir, **F32)
    assert cfg.tie_embeddings and "lm_head" not in params
    tokens = np.array([[1, 4, 9, 16, 25]], np.int32)
    with torch.no_grad():
        ref = hf(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
    ours = jax.jit(Llama(cfg).apply)({"params": params}, tokens, positions=np.arange(5)[None],
                                      mask=np.ones((1, 5), bool))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=TOL, rtol=0)


def test_missing_and_mismatched_files_give_clear_errors(gqa_checkpoints, tmp_path, capsys):
    hf, hf_dir, meta_dir, _ = gqa_checkpoints
    # no checkpoint at all
    assert main(["--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "neither config.json (HF checkpoint) nor params.json" in capsys.readouterr().err
    # an HF index that names a shard that is not there
    broken = tmp_path / "hf_missing"
    broken.mkdir()
    for f in os.listdir(hf_dir):
        if f != "model-00002-of-00005.safetensors":
            os.symlink(os.path.join(hf_dir, f), broken / f)
    with pytest.raises(ConversionError, match="model-00002-of-00005.safetensors"):
        convert_hf(str(broken), **F32)
    # a Meta checkpoint missing one of its two TP shards
    half = tmp_path / "meta_half"
    half.mkdir()
    for f in ("params.json", "consolidated.01.pth"):
        os.symlink(os.path.join(meta_dir, f), half / f)
    with pytest.raises(ConversionError, match="a shard is missing"):
        convert_meta(str(half), **F32)
    # a single shard left where two were written: the rows do not add up
    single = tmp_path / "meta_single"
    single.mkdir()
    os.symlink(os.path.join(meta_dir, "params.json"), single / "params.json")
    os.symlink(os.path.join(meta_dir, "consolidated.00.pth"), single / "consolidated.00.pth")
    with pytest.raises(ConversionError, match="incomplete|shape"):
        convert_meta(str(single), **F32)
    # config.json that disagrees with the tensors
    wrong = tmp_path / "hf_wrong"
    wrong.mkdir()
    for f in os.listdir(hf_dir):
        if f != "config.json":
            os.symlink(os.path.join(hf_dir, f), wrong / f)
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    cfg["intermediate_size"] = 64
    with open(wrong / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ConversionError, match=r"mlp.gate \(layer 0\) has shape \(32, 48\).*expected \(32, 64\)"):
        convert_hf(str(wrong), **F32)
