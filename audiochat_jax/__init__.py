"""audiochat_jax: teach a frozen Llama-2-chat to listen (modal-invariance alignment in JAX/Flax)."""

__version__ = "0.1.0"
