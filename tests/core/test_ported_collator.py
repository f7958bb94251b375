"""Samples as ``datasets`` returns them in numpy format train as they do with transformers' collator."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from trainer_kit import make_args
from treadle import Trainer
from treadle.data import default_data_collator


def test_numpy_scalars_and_nested_lists_become_tensors():
    samples = [
        {"x": [np.float32(0.5), np.float32(1.5)], "label": np.int64(2), "w": np.float32(0.25), "ids": [[1, 2], [3, 4]]},
        {"x": [np.float32(2.5), np.float32(3.5)], "label": np.int64(0), "w": np.float32(0.75), "ids": [[5, 6], [7, 8]]},
    ]
    batch = default_data_collator(samples)
    assert set(batch) == {"x", "labels", "w", "ids"}
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (2, 2)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [2, 0]
    assert batch["w"].dtype == torch.float32 and batch["w"].tolist() == [0.25, 0.75]
    assert batch["ids"].dtype == torch.long and batch["ids"].shape == (2, 2, 2)


def test_label_dtype_follows_the_values_not_their_type():
    assert default_data_collator([{"label_ids": np.float64(0.5)}, {"label_ids": np.float64(1.0)}])["labels"].dtype == torch.float32
    assert default_data_collator([{"label": np.int32(1)}, {"label": np.int32(0)}])["labels"].dtype == torch.long
    assert default_data_collator([{"labels": [np.int16(1), np.int16(2)]}] * 2)["labels"].dtype == torch.long
    assert default_data_collator([{"labels": 1.0}, {"labels": 0.0}])["labels"].dtype == torch.float32


def test_numpy_scalar_samples_and_list_samples_of_numpy_numbers():
    assert default_data_collator([np.float32(1.0), np.float32(2.0)]).tolist() == [1.0, 2.0]
    rows = default_data_collator([[np.float32(1.0), np.float32(2.0)], [np.float32(3.0), np.float32(4.0)]])
    assert isinstance(rows, torch.Tensor) and rows.shape == (2, 2)
    arrays = default_data_collator([{"x": [np.ones(2, dtype=np.float32)] * 3}] * 4)["x"]
    assert arrays.shape == (4, 3, 2) and arrays.dtype == torch.float32
    tensors = default_data_collator([{"x": [torch.tensor(1.0), torch.tensor(2.0)]}] * 3)["x"]
    assert tensors.shape == (3, 2) and tensors.dtype == torch.float32


class _Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, labels=None):
        out = self.linear(x).squeeze(-1)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def test_a_dataset_of_numpy_scalars_trains(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"x": [np.float32(a), np.float32(b)], "label": np.float32(a + b)} for a, b in rng.normal(size=(32, 2))]
    trainer = Trainer(model=_Regressor(), args=make_args(tmp_path, max_steps=4), train_dataset=rows)
    output = trainer.train()
    assert output.global_step == 4 and np.isfinite(output.training_loss)
