"""python -m audiochat_jax.train --config configs/align_mini_smoke.py --workdir /tmp/align_smoke \\
    --config.align.llm_dir=WORK/llm --config.align.encoder_dir=WORK/ctc/model \\
    --config.align.data_dir=WORK/speech/mini_speech/1.0.0 --config.align.responses=WORK/responses

The mini world's alignment stage, shrunk to a smoke run (10 steps, batch 8): the frozen mini
LLM, the pre-trained mini conformer and a new 2-layer MLP projector (2 stacked 40 ms frames =
80 ms per audio embedding) trained with cross-entropy on the precomputed responses plus an
auxiliary CTC loss (0.3). The loss falls and WORKDIR/model holds a ``speech_llm`` directory.
``train/align.py`` documents every ``config.align`` field; the four paths are required.
Args: ``full`` gives the unshrunk mini stage (250 steps, batch 16, eval at the end).
"""
from audiochat_jax.train import align_configs


def get_config(arg: str = ""):
    return align_configs.mini_config(smoke="full" not in set(filter(None, (arg or "").split(","))))
