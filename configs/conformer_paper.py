"""Paper-scale conformer CTC encoders (LibriSpeech / MLS English on a GPU host or TPU slice).

    python -m audiochat_jax.train --config configs/conformer_paper.py:paper
    python -m audiochat_jax.train --config configs/conformer_paper.py:nemo_small
    (run once the trainer's `ctc` task wraps these sections; model sections only for now)

`encoder` holds exactly the ConformerConfig fields, `features` the FeatureConfig fields.

arg:
  paper       d=512, 8 heads, FFN 2048, 8x (80 ms) depthwise-striding subsampling (the paper's
              stride), 16 blocks, kernel 9 (FastConformer); ~100M parameters with a 1024-piece
              sentencepiece vocabulary + blank.
  nemo_small  NeMo's stt_en_conformer_ctc_small shape: d=176, 4 heads, FFN 704 (4x), 16 blocks,
              kernel 31, 4x striding subsampling with d_model channels; ~13M parameters.
Both use bfloat16 compute with float32 parameters, full remat of each block and scanned blocks
(`scan_layers`: one block compiled instead of 16; the parameters keep the `layers_{i}` layout,
so a NeMo/HF conversion or an unrolled checkpoint loads as is).
"""
import ml_collections

from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.models.conformer import ConformerConfig

VARIANTS = {
    "paper": dict(d_model=512, n_layers=16, n_heads=8, ffn_dim=2048, conv_kernel_size=9,
                  subsampling="dw_striding", subsampling_factor=8, subsampling_channels=256,
                  vocab_size=1025),
    "nemo_small": dict(d_model=176, n_layers=16, n_heads=4, ffn_dim=704, conv_kernel_size=31,
                       subsampling="striding", subsampling_factor=4, subsampling_channels=176,
                       vocab_size=257),
}


def get_config(arg="paper"):
    arg = arg or "paper"
    if arg not in VARIANTS:
        raise ValueError(f"configs/conformer_paper.py:{arg}: unknown variant; use one of {sorted(VARIANTS)}")
    encoder = ConformerConfig(n_mels=80, xscaling=True, conv_norm="batch_norm", dropout=0.1,
                              attention_dropout=0.1, dtype="bfloat16", param_dtype="float32",
                              remat_policy="full", scan_layers=True, **VARIANTS[arg])
    config = ml_collections.ConfigDict()
    config.encoder = ml_collections.ConfigDict(encoder.to_dict())
    config.features = ml_collections.ConfigDict(FeatureConfig(n_mels=80).to_dict())
    return config
