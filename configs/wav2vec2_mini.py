"""Mini wav2vec2-style encoder for 2 CPU cores: the SSL-encoder alternative to conformer_mini.

    python -m audiochat_jax.train --config configs/wav2vec2_mini.py --workdir work/ctc_w2v \
        --config.ctc.data_dir=work/speech/synthetic_speech/1.0.0

trains it with CTC on any speech TFDS directory (a complete `ctc` trainer config:
train/ctc.py's ``full_config`` with ``encoder.kind="wav2vec2"``; the same steps, batch and
learning-rate schedule as configs/conformer_mini.py, so the two compare at one budget). The
export (WORKDIR/model, kind "wav2vec2") is what the align task's ``encoder_dir`` takes;
`configs/mini.py:encoder=wav2vec2` swaps it into the mini pipeline.

`encoder` holds `kind` plus exactly the Wav2Vec2Config fields
(`Wav2Vec2Config.from_dict(fields without kind)`). The published 7-conv stack (strides
5,2,2,2,2,2,2 = 320 samples = 20 ms frames, 400-sample receptive field) with 64 channels
instead of 512 (the conv stack would otherwise dominate a CPU step, as the 144-channel
subsampling did for the conformer), then 4 pre-LN layers of width 144 (4 heads, FFN 576) like
conformer_mini. LayerNorm convs + stable layer norm: the variant that trains from scratch
without the base model's warm-up sensitivity. The 128-tap position conv (2.6 s at 50 Hz) is
cut to 32 taps (0.64 s) for short mini utterances. A CTC head over the 28-character English
vocabulary + blank: 1.17M parameters (conformer_mini: 2.22M, its blocks carrying two FFNs and
a conv module each); a jitted forward of 8 x 3 s took 0.75 s on the (busy) 2-core machine.

The model reads the waveform, so the log-mel SpecAugment of `ctc.spec_augment` is off; its own
time masking (`mask_time_prob` 0.05 of frames in spans of 5 = 100 ms, replaced by a learnt
vector) regularises instead. `features` only records the 16 kHz sample rate in the export.

`arg`: "" (default) or "smoke" (2 layers of width 64, for a seconds-long CPU check).
"""
from audiochat_jax.audio.features import FeatureConfig
from audiochat_jax.models.wav2vec2 import Wav2Vec2Config
from audiochat_jax.text.char_vocab import CharVocab
from audiochat_jax.train import ctc as ctc_task


def get_config(arg=None):
    smoke = arg == "smoke"
    if arg not in (None, "", "smoke"):
        raise ValueError(f"configs/wav2vec2_mini.py: unknown arg {arg!r}; use '' or 'smoke'")
    width, layers = (64, 2) if smoke else (144, 4)
    encoder = Wav2Vec2Config(
        hidden_size=width, num_layers=layers, num_heads=4, intermediate_size=4 * width, hidden_act="gelu",
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        conv_dim=(32 if smoke else 64,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8, do_normalize=True, group_norm_masked=True,
        hidden_dropout=0.1, activation_dropout=0.0, attention_dropout=0.1, feat_proj_dropout=0.0, final_dropout=0.0,
        mask_time_prob=0.05, mask_time_length=5, ctc_vocab_size=CharVocab.english().size,
        dtype="float32", param_dtype="float32", remat_policy="none")
    config = ctc_task.full_config(dict(kind="wav2vec2", **encoder.to_dict()), FeatureConfig().to_dict())
    config.ctc.spec_augment.update(freq_masks=0, time_masks=0)  # log-mel masks; see the docstring
    config.total_steps = 3000
    config.batch_size = 32
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 200
    return config
