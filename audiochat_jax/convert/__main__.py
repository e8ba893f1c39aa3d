"""`python -m audiochat_jax.convert {llama,conformer,wav2vec2} --src PATH --out DIR`.

Each subcommand lives in its own module (convert/<kind>.py) exposing ``main(argv)``.
"""
import importlib
import sys

KINDS = {
    "llama": "audiochat_jax.convert.llama",
    "conformer": "audiochat_jax.convert.conformer",
    "wav2vec2": "audiochat_jax.convert.wav2vec2",
}

USAGE = """usage: python -m audiochat_jax.convert KIND --src PATH --out DIR [options]

KIND is one of:
  llama      HF Llama checkpoint (config.json + *.safetensors) or Meta checkpoint
             (params.json + consolidated.NN.pth) -> model directory (orbax + config.json)
  conformer  HF ParakeetForCTC checkpoint or NeMo .nemo archive -> model directory
  wav2vec2   HF Wav2Vec2Model / HuBERT checkpoint -> model directory

`python -m audiochat_jax.convert KIND --help` lists the options of one kind."""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    kind, rest = argv[0], argv[1:]
    if kind not in KINDS:
        print(f"error: unknown kind {kind!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(KINDS[kind])
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main())
