"""Tiny models and a tokenizer made in the test: nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

WORDS = ["good", "bad", "fine", "awful", "the", "a", "movie", "plot", "was", "is", "copy", "red", "blue", "green", "cat", "dog"]


def make_tokenizer(directory):
    """A word-level tokenizer over WORDS with BERT/T5-style special tokens, saved in ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "</s>": 4, **{w: i + 5 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A [SEP] $B </s>",
                                                             special_tokens=[("</s>", 4), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", eos_token="</s>")
    fast.save_pretrained(str(directory))
    return fast


@pytest.fixture
def model_dir(tmp_path):
    """``make(kind)`` -> a directory with a config.json for ``kind`` and the tokenizer (no weights)."""
    import transformers

    def make(kind: str):
        directory = tmp_path / f"{kind}-model"
        tokenizer = make_tokenizer(directory)
        vocab = len(tokenizer)
        if kind == "bert":
            config = transformers.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
        elif kind == "gpt2":
            config = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                             bos_token_id=4, eos_token_id=4, pad_token_id=0)
        else:
            config = transformers.T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                           decoder_start_token_id=0, pad_token_id=0, eos_token_id=4)
        config.save_pretrained(str(directory))
        return directory

    return make


@pytest.fixture
def treadle_cli(tmp_path):
    def run(*argv, timeout=600):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
               "TOKENIZERS_PARALLELISM": "false"}
        env.pop("TREADLE_DISABLE_PLUGIN_AUTOLOAD", None)
        return subprocess.run([sys.executable, "-m", "treadle", *map(str, argv)], capture_output=True, text=True,
                              env=env, timeout=timeout, cwd=tmp_path)

    return run

