"""audiochat_jax: teach a frozen Llama-2-chat to listen (JAX/Flax).

Version ranges: lower bounds are what the code uses, upper bounds the next major/minor that
has not been tried.
"""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.11",
    "flax>=0.12.0,<0.13",
    "optax>=0.2.6,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "tensorflow-cpu>=2.20,<2.22",
    "tensorflow-datasets>=4.9.9,<4.10",
    "librosa>=0.11,<0.12",
    "sentencepiece>=0.2.0,<0.3",
    "ml_collections>=1.1,<1.2",
    "absl-py>=2.1,<3",
    "soundfile>=0.13,<0.15",
    "tqdm>=4.66,<5",
    "matplotlib>=3.9,<4",
    "numpy>=2.0,<3",
    "scipy>=1.13,<2",
    # espeak-ng (library + voice data) as a wheel: the mini world synthesises its speech
    # with it, so a fresh machine needs no apt package.
    "espeakng-loader>=0.2.4,<0.3",
    "jiwer>=3.0,<5",
    "sacrebleu>=2.4,<3",
    # Reading HF checkpoints (config.json + safetensors) needs no torch.
    "safetensors>=0.4,<1",
    # The mini world's report uses an outside ASR for the cascade baseline (ships its en-us model).
    "pocketsphinx>=5.0,<6",
    # tfds 4.9.x imports it in DatasetBuilder.code_path but declares it only for Python<3.9.
    "importlib_resources>=6",
]

# The OpenAI-compatible server and its web demo (python -m audiochat_jax.serve).
SERVE = ["fastapi>=0.115,<1", "uvicorn>=0.30,<1"]

EXTRAS = {
    "serve": SERVE,
    "dev": SERVE + [
        # The server's tests: the official client against a live server, and the demo page
        # in headless Chromium (Debian's chromium + chromium-driver; .ci/run installs them).
        "openai>=1.40,<4",
        "selenium>=4.20,<5",
        "httpx>=0.27,<1",
        "pytest>=8,<10",
        "pytest-xdist>=3.6,<4",  # --no-loadscope-reorder (README's test command)
        # CPU torch from local disk here; a bare `torch` would pull a multi-GB CUDA build.
        # Used for parity tests and for reading Meta .pth / .nemo checkpoints only.
        "torch==2.13.0",
        "transformers>=5.0,<6",
        # The TFDS builders' Beam path is tested with the DirectRunner.
        "apache-beam>=2.60,<3",
    ],
    # Reading Meta consolidated.*.pth and NeMo .nemo checkpoints (torch.load weights_only).
    "convert": ["torch==2.13.0"],
    "beam": ["apache-beam>=2.60,<3"],
    "cuda12": ["jax[cuda12]>=0.10.0,<0.11"],
    "tpu": ["jax[tpu]>=0.10.0,<0.11"],
}

setup(
    name="audiochat_jax",
    version="0.1.0",
    description="Modal-invariance alignment of a speech encoder to a frozen Llama-2-chat, in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["audiochat_jax", "audiochat_jax.*"]),
    package_data={"audiochat_jax.serving": ["static/*"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
