"""A transformers model pushed by treadle-hub loads back with ``from_pretrained`` from the hub."""

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
    args = TrainingArguments(output_dir=str(tmp_path / "tiny-bert"), max_steps=2, per_device_train_batch_size=8,
                             report_to=["none"], disable_tqdm=True, push_to_hub=True, hub_token=TOKEN,
                             hub_strategy="end", save_strategy="no")
    trainer = track(Trainer(model=model, args=args, train_dataset=rows))
    trainer.train()
    job = trainer.push_to_hub(finetuned_from="a tiny random BERT")
    assert job.ok, job.error

    files = fake_hub.files("tester/tiny-bert")
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert 'library_name: "transformers"' in card and "- transformers " in card
    assert 'AutoModel.from_pretrained("tester/tiny-bert")' in card

    local = snapshot_download("tester/tiny-bert", endpoint=fake_hub.url, token=TOKEN)
    loaded = transformers.BertForSequenceClassification.from_pretrained(local)
    trained = trainer.model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, trained[name]), name
