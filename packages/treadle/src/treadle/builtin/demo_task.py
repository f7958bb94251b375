"""The ``demo`` task: read noisy 8x8 digit glyphs with a small MLP. No download, a minute on a laptop CPU.

Ten hand-drawn 5x7 digit bitmaps are stamped at a random position of an 8x8 canvas, with a
random ink strength, strokes that drop out, stray ink and Gaussian noise, so the task is easy
enough to learn in a few epochs and hard enough that the accuracy curve means something. Every
sample follows from ``args.seed``, and the three splits come from separate streams, so the
same seed always gives the same data.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from treadle.components import TaskParts

GLYPHS = {
    0: (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("#####", "...#.", "..#..", "...#.", "....#", "#...#", ".###."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}
"""The digit bitmaps, 7 rows of 5 columns; ``#`` is ink."""

CANVAS = 8
NUM_CLASSES = len(GLYPHS)
SPLIT_SIZES = {"train": 20_000, "eval": 2_000, "test": 2_000}
_SPLIT_STREAM = {"train": 0, "eval": 1, "test": 2}


def glyph_bitmaps() -> torch.Tensor:
    """The glyphs as a ``(10, 7, 5)`` float tensor of 0 and 1."""
    return torch.tensor([[[c == "#" for c in row] for row in GLYPHS[d]] for d in range(NUM_CLASSES)], dtype=torch.float32)


def make_glyphs(num_samples: int, seed: int, stream: int = 0, *, noise: float = 0.18, dropout: float = 0.08, stray: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_samples`` noisy glyph images ``(n, 64)`` and their digits ``(n,)``.

    The result depends on ``seed`` and ``stream`` only; different streams are independent.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream])))
    bitmaps = glyph_bitmaps().numpy()
    glyph_h, glyph_w = bitmaps.shape[1:]
    labels = rng.integers(0, NUM_CLASSES, size=num_samples)
    top = rng.integers(0, CANVAS - glyph_h + 1, size=num_samples)
    left = rng.integers(0, CANVAS - glyph_w + 1, size=num_samples)

    ink = bitmaps[labels] * (rng.random((num_samples, glyph_h, glyph_w)) >= dropout)
    images = np.zeros((num_samples, CANVAS, CANVAS), dtype=np.float32)
    for y in range(CANVAS - glyph_h + 1):
        for x in range(CANVAS - glyph_w + 1):
            here = (top == y) & (left == x)
            images[here, y : y + glyph_h, x : x + glyph_w] = ink[here]
    images = np.maximum(images, rng.random(images.shape) < stray)
    images *= rng.uniform(0.5, 1.0, size=(num_samples, 1, 1))
    images += rng.normal(0.0, noise, size=images.shape)
    pixels = torch.from_numpy(images.reshape(num_samples, CANVAS * CANVAS).astype(np.float32))
    return pixels, torch.from_numpy(labels.astype(np.int64))


class GlyphDataset(torch.utils.data.Dataset):
    """Samples as ``{"pixel_values": (64,) float tensor, "labels": int}``."""

    def __init__(self, pixels: torch.Tensor, labels: torch.Tensor) -> None:
        self.pixels = pixels
        self.labels = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"pixel_values": self.pixels[index], "labels": self.labels[index]}


class GlyphClassifier(nn.Module):
    """A two-hidden-layer MLP; dropout makes the run depend on the random state, as real models do."""

    def __init__(self, hidden: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(CANVAS * CANVAS, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, pixel_values: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        logits = self.net(pixel_values)
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Accuracy:
    """``compute_metrics`` for the demo: the fraction of glyphs read correctly.

    Takes an ``EvalPrediction``-like object (``predictions`` / ``label_ids``) or a
    ``(predictions, labels)`` pair; predictions are logits or class ids. With
    ``batch_eval_metrics`` the loop calls it per batch with ``compute_result``: counts add up
    until ``compute_result`` is true.
    """

    def __init__(self) -> None:
        self.correct = 0
        self.total = 0

    def __call__(self, eval_pred: Any, compute_result: Optional[bool] = None) -> Optional[dict[str, float]]:
        predictions = getattr(eval_pred, "predictions", None)
        labels = getattr(eval_pred, "label_ids", None)
        if predictions is None:
            predictions, labels = eval_pred[0], eval_pred[1]
        predictions, labels = _as_numpy(predictions), _as_numpy(labels)
        if predictions.ndim == labels.ndim + 1:
            predictions = predictions.argmax(axis=-1)
        self.correct += int((predictions == labels).sum())
        self.total += int(labels.size)
        if compute_result is False:
            return None
        result = {"accuracy": self.correct / max(1, self.total)}
        self.correct = self.total = 0
        return result


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def build(args: Any) -> TaskParts:
    """The demo's model, datasets and metric; the model's initial weights also follow ``args.seed``."""
    splits = {
        name: GlyphDataset(*make_glyphs(size, args.seed, _SPLIT_STREAM[name]))
        for name, size in SPLIT_SIZES.items()
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = GlyphClassifier()
    return TaskParts(
        model=model,
        train_dataset=splits["train"],
        eval_dataset=splits["eval"],
        test_dataset=splits["test"],
        compute_metrics=Accuracy(),
    )
