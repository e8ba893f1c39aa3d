"""audiochat_jax/lengths.py and the length arithmetic built on it: the same counts as floor
division, and jitted as one divide (no sign corrections for XLA to repeat in every masked
element)."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from audiochat_jax.audio.features import FeatureConfig, num_frames
from audiochat_jax.lengths import floor_div
from audiochat_jax.models import conformer
from audiochat_jax.models.conformer import ConformerConfig
from audiochat_jax.models.projector import stacked_lengths


def test_floor_div_equals_floor_division_for_ints_numpy_and_jitted_arrays():
    lengths = np.arange(0, 2000, 7, dtype=np.int32)
    for d in (1, 2, 3, 160):
        np.testing.assert_array_equal(jax.jit(floor_div, static_argnums=1)(jnp.asarray(lengths), d), lengths // d)
        np.testing.assert_array_equal(floor_div(lengths, d), lengths // d)
        assert floor_div(999, d) == 999 // d and isinstance(floor_div(999, d), int)
    # A jax array's negatives count as 0 (there is no negative length to floor).
    np.testing.assert_array_equal(floor_div(jnp.array([-161, -1, 0, 1]), 160), [0, 0, 0, 0])


def test_frame_counts_match_floor_division_on_every_path():
    """Samples -> log-mel frames -> conformer frames -> stacked embeddings, jitted and in numpy,
    equal the floor-division formulas (the conformer's also match Parakeet's in test_conformer)."""
    samples = np.arange(0, 20000, 37, dtype=np.int32)
    cfg = FeatureConfig()
    frames = (samples + 2 * (cfg.n_fft // 2) - cfg.n_fft) // cfg.hop_length
    enc = ConformerConfig(n_mels=80, d_model=32, n_layers=1, n_heads=2, ffn_dim=64, subsampling_factor=8)
    sub = frames
    for _ in range(3):
        sub = (sub + 2 * 1 - 3) // 2 + 1
    stacked = (sub + 2 - 1) // 2

    def chain(s):
        f = num_frames(s, cfg)
        c = conformer.subsampled_lengths(f, enc)
        return f, c, stacked_lengths(c, 2)

    for got in (jax.jit(chain)(jnp.asarray(samples)), chain(samples)):
        for a, b in zip(got, (frames, sub, stacked)):
            np.testing.assert_array_equal(a, b)


def test_jitted_length_chain_has_no_floor_division_corrections():
    """jnp's ``//`` on int32 lowers to a divide plus sign/remainder selects; XLA:CPU repeats the
    whole chain in every element of each mask it fuses it into. The chain here is divides and
    shifts only."""
    enc = ConformerConfig(n_mels=80, d_model=32, n_layers=1, n_heads=2, ffn_dim=64, subsampling_factor=4)
    chain = jax.jit(lambda s: stacked_lengths(conformer.subsampled_lengths(num_frames(s), enc), 2))
    hlo = chain.lower(jnp.zeros((4,), jnp.int32)).as_text()
    assert not re.search(r"\bsign\b|remainder|floor_divide", hlo), hlo
    floor = jax.jit(lambda s: (s + 1) // 2).lower(jnp.zeros((4,), jnp.int32)).as_text()
    assert re.search(r"\bsign\b|remainder|floor_divide", floor)   # what the check looks for
