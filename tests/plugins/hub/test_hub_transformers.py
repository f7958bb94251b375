"""A transformers model pushed by treadle-hub loads back with ``from_pretrained`` from the hub, tokenizer included."""

from __future__ import annotations

import pytest
from hub_kit import TOKEN, track

pytestmark = pytest.mark.usefixtures("hub_env")


def test_a_pushed_transformers_model_loads_with_from_pretrained(fake_hub, tmp_path):
    transformers = pytest.importorskip("transformers")
    import torch
    from huggingface_hub import snapshot_download
    from treadle.args import TrainingArguments
    from treadle.trainer import Trainer

    config = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    g = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 64, (8,), generator=g), "labels": i % 3} for i in range(32)]
    tokenizer = _word_tokenizer()  # built here: nothing is downloaded
    args = TrainingArguments(output_dir=str(tmp_path / "tiny-bert"), max_steps=2, per_device_train_batch_size=8,
                             report_to=["none"], disable_tqdm=True, push_to_hub=True, hub_token=TOKEN,
                             hub_strategy="end", save_strategy="no")
    trainer = track(Trainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer))
    trainer.train()
    job = trainer.push_to_hub(finetuned_from="a tiny random BERT")
    assert job.ok, job.error

    files = fake_hub.files("tester/tiny-bert")
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    card = files["README.md"].decode()
    assert 'library_name: "transformers"' in card and "- transformers " in card
    assert 'AutoModel.from_pretrained("tester/tiny-bert")' in card

    local = snapshot_download("tester/tiny-bert", endpoint=fake_hub.url, token=TOKEN)
    loaded = transformers.BertForSequenceClassification.from_pretrained(local)
    trained = trainer.model.state_dict()
    assert transformers.AutoTokenizer.from_pretrained(local)("the cat")["input_ids"] == tokenizer("the cat")["input_ids"]
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, trained[name]), name


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, "the": 2, "cat": 3, "dog": 4}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]")
