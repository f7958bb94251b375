"""treadle.launch: which words go to torchrun, what torchrun is asked, what is refused (no processes started)."""

import pytest

from treadle.errors import UsageError
from treadle.launch import check_launch_options, split_launch_options, torchrun_argv


def test_launcher_options_are_taken_out_in_every_spelling():
    options, rest = split_launch_options(["--nproc_per_node", "2", "--max_steps", "5", "--master-port=29999", "run.yaml"])
    assert options == {"nproc_per_node": "2", "master_port": "29999"}
    assert rest == ["--max_steps", "5", "run.yaml"]


def test_one_machine_gets_a_free_port_and_an_explicit_rendezvous_is_kept():
    assert torchrun_argv({"nproc_per_node": "2"}, "train", ["--max_steps", "3"]) == [
        "--nproc_per_node=2", "--standalone", "--module", "treadle", "train", "--max_steps", "3"
    ]
    argv = torchrun_argv({"nnodes": "2", "rdzv_backend": "c10d", "rdzv_endpoint": "host:1"}, "train", [])
    assert "--standalone" not in argv and argv[-3:] == ["--module", "treadle", "train"]


@pytest.mark.parametrize(
    ("options", "environ", "message"),
    [
        ({"nproc_per_node": "2"}, {"WORLD_SIZE": "2", "RANK": "1"}, "was itself started by a launcher (WORLD_SIZE=2)"),
        ({"nproc_per_node": "0"}, {}, "expected a number of processes"),
        ({"nproc_per_node": "2", "master_port": "x"}, {}, "--master_port 'x': expected a whole number"),
        ({"nnodes": "2"}, {}, "the machines need a meeting point"),
    ],
)
def test_contradictions_and_bad_values_are_one_message(options, environ, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_launch_options(options, environ)


def test_an_option_without_its_value_is_refused():
    with pytest.raises(UsageError, match="--nproc_per_node needs a value"):
        split_launch_options(["--nproc_per_node", "--max_steps", "3"])
