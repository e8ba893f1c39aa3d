"""Every configs/*.py loads, with no arg and with every arg its docstring, launch/README.md or
its own table (MESHES / VARIANTS) names; each docstring opens with a command of a module that
exists; the paper/pod configs' meshes match their slices (configs cannot drift from the code)."""
import glob
import importlib.util
import os
import re

import ml_collections
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def _load(path):
    spec = importlib.util.spec_from_file_location(f"cfg_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documented_args(path, module):
    name = os.path.basename(path)
    texts = [open(p).read() for p in CONFIGS] + [open(os.path.join(REPO, "launch", "README.md")).read()]
    args = {m for t in texts for m in re.findall(rf"configs/{re.escape(name)}:([\w.,=/-]+)", t)}
    for table in ("MESHES", "VARIANTS"):
        args |= set(getattr(module, table, {}))
    return sorted(args)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_with_every_documented_arg(path):
    module = _load(path)
    doc = (module.__doc__ or "").strip()
    head = "\n".join(doc.splitlines()[:6])
    commands = re.findall(r"python -m (audiochat_jax[\w.]*)", head)
    assert commands, f"{path}: the docstring must open with the command that runs it"
    for mod in commands:
        assert importlib.util.find_spec(mod) is not None, f"{path}: no module {mod}"
    configs = [module.get_config()] + [module.get_config(arg) for arg in _documented_args(path, module)]
    for config in configs:
        assert isinstance(config, ml_collections.ConfigDict)
        config.to_dict()  # every field resolves (FieldReferences included)


@pytest.mark.parametrize("size", ["7b", "13b", "70b"])
def test_pod_configs_fit_their_slices(size):
    from audiochat_jax.parallel.chips import CHIPS, SLICES
    module = _load(os.path.join(REPO, "configs", f"llama2_{size}_chat.py"))
    assert set(module.MESHES) == set(SLICES)
    for name in module.MESHES:
        c = module.get_config(name)
        data, fsdp, tensor = c.mesh_shape
        assert data * fsdp * tensor == SLICES[name].devices
        assert c.batch_size % (data * fsdp) == 0
        assert c.peak_flops == CHIPS[c.plan.chip].peak_bf16_flops
        assert c.task == "align" and c.llm.scan_layers
        # The LLM's remat/dtype reach the loaded LLM through align's overrides.
        assert (c.align.llm_remat_policy, c.align.llm_dtype, c.align.llm_attention_impl) == \
            (c.llm.remat_policy, c.llm.dtype, c.llm.attention_impl)
        assert f"configs/llama2_{size}_chat.py:{name}" in module.__doc__
    with pytest.raises(ValueError, match="unknown slice"):
        module.get_config("v9-1")


def test_override_of_llm_remat_reaches_the_align_section():
    c = _load(os.path.join(REPO, "configs", "llama2_7b_chat.py")).get_config("v4-32")
    c.llm.remat_policy = "full"
    assert c.align.llm_remat_policy == "full"
    c.llm["attention_impl"] = "cudnn"  # as bench/align_step.py --set writes it
    assert c.align.llm_attention_impl == "cudnn"
    from audiochat_jax.train.align import llm_overrides  # what align_task and plan apply on load
    assert llm_overrides(c.align) == {"dtype": "bfloat16", "remat_policy": "full", "attention_impl": "cudnn"}
