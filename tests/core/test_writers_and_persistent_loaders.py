"""Which process writes checkpoints (save_on_each_node), and persistent evaluation loaders."""

from types import SimpleNamespace

from trainer_kit import Classifier, make_args, make_data
from treadle.checkpoint import _is_writer
from treadle.trainer import Trainer


def strategy(global_rank: int, local_rank: int) -> SimpleNamespace:
    return SimpleNamespace(is_global_zero=global_rank == 0, is_local_zero=local_rank == 0)


def test_only_the_global_main_process_writes_by_default():
    args = SimpleNamespace(save_on_each_node=False)
    assert _is_writer(args, strategy(0, 0))
    assert not _is_writer(args, strategy(2, 0))  # main process of the second node
    assert not _is_writer(args, strategy(1, 1))


def test_save_on_each_node_makes_each_node_main_process_a_writer():
    args = SimpleNamespace(save_on_each_node=True)
    assert _is_writer(args, strategy(0, 0))
    assert _is_writer(args, strategy(2, 0))
    assert not _is_writer(args, strategy(3, 1))


def test_persistent_workers_keep_the_evaluation_loader(tmp_path):
    data = make_data(32)
    args = make_args(tmp_path, dataloader_num_workers=1, dataloader_persistent_workers=True)
    trainer = Trainer(Classifier(), args, train_dataset=data, eval_dataset=data)
    first = trainer.get_eval_dataloader()
    assert trainer.get_eval_dataloader() is first
    assert trainer.evaluate()["eval_loss"] == trainer.evaluate()["eval_loss"]
    assert trainer.get_eval_dataloader() is first


def test_without_persistent_workers_each_evaluation_gets_a_fresh_loader(tmp_path):
    data = make_data(32)
    args = make_args(tmp_path, dataloader_num_workers=1, dataloader_persistent_workers=False)
    trainer = Trainer(Classifier(), args, train_dataset=data, eval_dataset=data)
    assert trainer.get_eval_dataloader() is not trainer.get_eval_dataloader()
