"""python -m audiochat_jax.responses --config configs/responses_example.py \
    --config.responses.llm_dir=WORK/lm/model --config.responses.tokenizer=WORK/tokenizer.model \
    --config.responses.dataset_dir=WORK/speech/mini_speech/1.0.0 --config.responses.out_dir=WORK/responses

The frozen LLM answers every transcript of the train split (greedy, up to 64 new tokens);
OUT holds shards/, responses.jsonl (joined by data/input.py), provenance.json and
summary.json (printed at the end). Rerunning resumes. Args (comma-separated):
``continue`` asks the LLM to continue the transcript instead of answering it as is;
``sample`` samples (temperature 0.7, top-p 0.9) instead of greedy decoding.
Fields: audiochat_jax/data/responses.py ``ResponsesConfig``.
"""
import ml_collections

from audiochat_jax.data import responses


def get_config(arg: str = ""):
    args = set(filter(None, (arg or "").split(",")))
    c = ml_collections.ConfigDict()
    c.responses = responses.default_config()  # llm_dir, tokenizer, dataset_dir, out_dir: required
    c.responses.split = "train"
    c.responses.instruction = "{content}"  # the plain transcript is the user turn
    c.responses.max_new_tokens = 64
    c.responses.batch_size = 8
    c.responses.shard_size = 1024
    if "continue" in args:
        c.responses.instruction = "Continue the following text: {content}"
    if "sample" in args:
        c.responses.temperature, c.responses.top_p = 0.7, 0.9
    return c
