"""models/dropout.Dropout: nn.Dropout's statistics from 16 random bits per element."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiochat_jax.models.dropout import Dropout, keep_mask, random_bits, random_word_pairs
from audiochat_jax.parallel import sharding

DROP = round(0.1 * 65536) / 65536       # the rate as drawn: 6554 / 65536


def test_keep_mask_drops_at_the_rate_with_independent_quarters_of_each_hash():
    mask = np.asarray(keep_mask(jax.random.key(0), 0.1, (64, 125, 129)))   # odd last axis
    assert mask.shape == (64, 125, 129)
    n = mask.size
    # Binomial: 5 standard deviations of the mean of ~1M draws is ~0.0015.
    assert abs(mask.mean() - (1 - DROP)) < 5 * np.sqrt(DROP * (1 - DROP) / n)
    # One hash gives 4 consecutive elements of the last axis their 16 bits each (two halves
    # of each of its two words); any two of them are independent draws: P(both kept) = keep^2.
    # Taking one quarter twice would give keep instead.
    keep = 1 - DROP
    for a, b in ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (3, 4)):   # (3, 4): across hashes
        pairs = mask[..., a:124:4] & mask[..., b:125:4]
        assert abs(pairs.mean() - keep ** 2) < 5 * np.sqrt(keep ** 2 * (1 - keep ** 2) / pairs.size), (a, b)
    # Neighbours along the leading axes are independent too (rows come from different words).
    rows = mask[:, :-1] & mask[:, 1:]
    assert abs(rows.mean() - keep ** 2) < 5 * np.sqrt(keep ** 2 * (1 - keep ** 2) / rows.size)
    # Same key, same mask; another key, another mask.
    np.testing.assert_array_equal(mask, keep_mask(jax.random.key(0), 0.1, (64, 125, 129)))
    assert (mask != np.asarray(keep_mask(jax.random.key(1), 0.1, (64, 125, 129)))).mean() > 0.1


@pytest.mark.parametrize("shape", [(), (0,), (7,), (16, 75, 288), (2, 3, 4, 5)])
def test_random_bits_are_jax_random_bits_bit_for_bit(shape):
    """The unrolled hash draws the very words jax.random.bits draws, for new-style and raw
    keys; other key types go to jax.random.bits itself."""
    for key in (jax.random.key(3), jax.random.PRNGKey(11), jax.random.key(5, impl="rbg")):
        ours = jax.jit(random_bits, static_argnums=1)(key, shape)
        assert ours.dtype == jnp.uint32 and ours.shape == shape
        np.testing.assert_array_equal(ours, jax.random.bits(key, shape, jnp.uint32))


def test_word_pairs_are_the_two_words_jax_random_bits_xors():
    """random_word_pairs keeps both words of the hash that random_bits (= jax.random.bits)
    XORs into one, so the mask's bits come from jax's own Threefry stream; other key types
    draw two jax.random.bits words per element."""
    for key in (jax.random.key(3), jax.random.PRNGKey(11)):
        pairs = jax.jit(random_word_pairs, static_argnums=1)(key, (16, 75, 144))
        assert pairs.dtype == jnp.uint32 and pairs.shape == (16, 75, 144, 2)
        np.testing.assert_array_equal(pairs[..., 0] ^ pairs[..., 1], jax.random.bits(key, (16, 75, 144), jnp.uint32))
        assert (pairs[..., 0] != pairs[..., 1]).mean() > 0.99
    rbg = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(random_word_pairs(rbg, (3, 4)), jax.random.bits(rbg, (3, 4, 2), jnp.uint32))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rolled loop is JAX's CPU lowering")
def test_mask_hash_has_no_loop_on_cpu():
    """On CPU jax.random.bits lowers its hash as a 5-iteration while loop over the whole
    counter arrays; the mask's hash is unrolled, so XLA can fuse it into the mask's consumer."""
    key = jax.random.key(0)
    text = lambda f: jax.jit(f).lower(key).compile().as_text()
    assert " while(" in text(lambda k: jax.random.bits(k, (16, 75, 288), jnp.uint32) >= 7)  # the premise
    assert " while(" not in text(lambda k: keep_mask(k, 0.1, (16, 75, 576)))


def test_dropout_keeps_the_expectation_and_is_the_identity_when_deterministic():
    x = jnp.asarray(np.random.RandomState(0).rand(256, 1000) + 0.5, jnp.float32)
    y = np.asarray(Dropout(0.1).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(3)}))
    kept = y != 0
    # Kept values are scaled by 1 / (1 - drawn rate), exactly as the expectation needs.
    np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - DROP), rtol=1e-6)
    assert abs(kept.mean() - (1 - DROP)) < 5 * np.sqrt(DROP * (1 - DROP) / kept.size)
    np.testing.assert_array_equal(Dropout(0.1).apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(Dropout(0.0).apply({}, x, deterministic=False), x)   # no rng needed
    bf16 = Dropout(0.3).apply({}, x.astype(jnp.bfloat16), deterministic=False, rngs={"dropout": jax.random.key(4)})
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_array_equal(Dropout(1.0).apply({}, x, deterministic=False), np.zeros(x.shape))
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\], got 1.5"):
        Dropout(1.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})


def test_a_batch_sharded_mask_equals_the_single_device_one(n_devices):
    """The mask is drawn with the activations' leading axes, so on a mesh each device draws its
    rows of the same mask (jax_threefry_partitionable) and the step's result does not depend
    on the mesh."""
    x = jnp.ones((8, 12, 6), jnp.float32)
    f = jax.jit(lambda x, k: Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": k}))
    one = f(x, jax.random.key(5))
    mesh = sharding.make_mesh((2, 2, 2))
    with jax.set_mesh(mesh), sharding.axis_rules():
        eight = f(jax.device_put(x, sharding.batch_sharding(mesh, 3)), jax.random.key(5))
    np.testing.assert_array_equal(jax.device_get(eight), one)
