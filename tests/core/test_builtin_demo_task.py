"""The builtin demo task: deterministic synthetic glyphs, a model in the expected shape, accuracy."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from treadle.args import TrainingArguments
from treadle.builtin import demo_task
from treadle.components import TaskParts
from treadle.plugins import get_plugin_manager


@pytest.fixture(scope="module")
def parts():
    return demo_task.build(TrainingArguments("unused", seed=42))


def test_registered_as_demo_with_defaults_that_suit_it():
    spec = get_plugin_manager().resolve("task", "demo")
    assert spec.load() is demo_task.build
    assert spec.defaults["learning_rate"] == 2e-3
    assert spec.defaults["eval_strategy"] == "epoch"


def test_build_returns_the_three_splits_and_a_metric(parts):
    assert isinstance(parts, TaskParts)
    assert [len(parts.train_dataset), len(parts.eval_dataset), len(parts.test_dataset)] == [20_000, 2_000, 2_000]
    sample = parts.train_dataset[0]
    assert sample["pixel_values"].shape == (64,) and sample["pixel_values"].dtype == torch.float32
    assert isinstance(sample["labels"], int) and 0 <= sample["labels"] < 10
    counts = np.bincount([parts.train_dataset[i]["labels"] for i in range(2_000)], minlength=10)
    assert counts.min() > 150, "every digit is well represented"


def test_glyphs_are_noisy_but_recognisable():
    clean, labels = demo_task.make_glyphs(50, seed=1, noise=0.0, dropout=0.0, stray=0.0)
    noisy, same_labels = demo_task.make_glyphs(50, seed=1)
    assert torch.equal(labels, same_labels)
    bitmaps = demo_task.glyph_bitmaps()
    for image, digit in zip(clean, labels):
        ink = (image.view(8, 8) > 0).float()
        windows = [ink[y : y + 7, x : x + 5] for y in range(2) for x in range(4)]
        assert any(torch.equal(w, bitmaps[digit]) for w in windows), "the glyph is stamped whole somewhere"
        assert ink.sum() == bitmaps[digit].sum()
    assert (noisy != clean).float().mean() > 0.9


def test_data_and_weights_follow_the_seed_only():
    rng_before = torch.random.get_rng_state()
    a = demo_task.build(SimpleNamespace(seed=7))
    b = demo_task.build(SimpleNamespace(seed=7))
    c = demo_task.build(SimpleNamespace(seed=8))
    assert torch.equal(torch.random.get_rng_state(), rng_before), "building does not consume the global RNG"
    assert torch.equal(a.train_dataset.pixels, b.train_dataset.pixels)
    assert not torch.equal(a.train_dataset.pixels, c.train_dataset.pixels)
    assert not torch.equal(a.train_dataset.pixels[:2000], a.eval_dataset.pixels), "splits are different samples"
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(a.model.net[0].weight, c.model.net[0].weight)


def test_model_forward_contract(parts):
    batch = torch.utils.data.default_collate([parts.eval_dataset[i] for i in range(8)])
    out = parts.model(**batch)
    assert out["logits"].shape == (8, 10) and out["loss"].ndim == 0
    assert set(parts.model(batch["pixel_values"])) == {"logits"}
    assert any(isinstance(m, torch.nn.Dropout) for m in parts.model.modules())


def test_accuracy_metric_accepts_the_usual_shapes():
    metric = demo_task.Accuracy()
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    labels = np.array([1, 0, 0, 0])
    assert metric(SimpleNamespace(predictions=logits, label_ids=labels)) == {"accuracy": 0.75}
    assert metric((torch.tensor([1, 1, 0, 1]), torch.tensor(labels))) == {"accuracy": 0.5}
    # batch_eval_metrics: counts add up until compute_result is true
    assert metric((logits[:2], labels[:2]), compute_result=False) is None
    assert metric((logits[2:], labels[2:]), compute_result=True) == {"accuracy": 0.75}


def test_demo_is_learnable_well_above_chance(parts):
    """Two epochs of a plain loop with the task's learning rate and batch size: over 90% accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small only loses time to thread hand-offs
    try:
        accuracy = _train_plainly(parts, epochs=2)
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.9


def _train_plainly(parts, epochs):
    torch.manual_seed(0)
    model = demo_task.GlyphClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    pixels, labels = parts.train_dataset.pixels, torch.tensor(parts.train_dataset.labels)
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(labels)).split(64):
            optimizer.zero_grad()
            model(pixels[batch], labels[batch])["loss"].backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(parts.eval_dataset.pixels)["logits"]
    return parts.compute_metrics((logits, parts.eval_dataset.labels))["accuracy"]
