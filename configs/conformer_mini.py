"""Mini conformer CTC encoder for 2 CPU cores (the embedded mini world's speech encoder).

    python -m audiochat_jax.train --config configs/conformer_mini.py --workdir work/ctc \
        --config.ctc.data_dir=work/speech/synthetic_speech/1.0.0

trains it with CTC on any speech TFDS directory (a complete `ctc` trainer config:
train/ctc.py's ``full_config``; configs/mini.py uses these same sections in the pipeline).

`encoder` holds exactly the ConformerConfig fields (`ConformerConfig.from_dict(config.encoder.to_dict())`),
`features` the FeatureConfig fields. d=144, 4 blocks, 4 heads, FFN 576, depthwise-striding
4x subsampling with 32 channels: 2.13M parameters with the 28-character English vocabulary +
blank. The subsampling stem's channel count sets the step time on CPU: on 2 cores, batch 16
of 4 s clips, the stem alone took 724 ms of a 1553 ms gradient step with 64 channels and
212 ms of 999 ms with 32 (its [batch, T/2, 40, C] activations fall out of cache), hence 32.
`arg` is unused.
"""
from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.models.conformer import ConformerConfig
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.train import ctc as ctc_task


def get_config(arg=None):
    del arg
    encoder = ConformerConfig(
        n_mels=80, d_model=144, n_layers=4, n_heads=4, ffn_dim=576, conv_kernel_size=31,
        subsampling="dw_striding", subsampling_factor=4, subsampling_channels=32,
        xscaling=True, conv_norm="batch_norm", vocab_size=CharVocab.english().size,
        dropout=0.1, attention_dropout=0.1, dtype="float32", param_dtype="float32", remat_policy="none")
    config = ctc_task.full_config(encoder.to_dict(), FeatureConfig(n_mels=80).to_dict())
    config.total_steps = 3000
    config.batch_size = 32
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 200
    return config
