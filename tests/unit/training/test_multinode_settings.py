"""Training across machines, without starting one: the settings, torchrun's command line per node,
which process writes the model, and the Params and flags that carry them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.cli import build_parser, main
from tasks.config import load_config
from tasks.contracts import check_params, dag_params, overrides_from_params
from tasks.errors import ConfigError
from tasks.training.launcher import torchrun_command, worker_env
from tasks.training.runtime import Distributed


def settings(**train) -> dict:
    return {f"train.{key}": value for key, value in train.items()}


def test_one_machine_runs_standalone_and_several_meet_at_node_0s_c10d_rendezvous():
    alone = torchrun_command(load_config(settings(nproc=2), environ={}), Path("/d"), Path("/m"))
    assert alone[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert alone[-6:] == ["-m", "tasks.training.worker", "--dataset", "/d", "--out", "/m"]
    nodes = [torchrun_command(load_config(settings(nproc=4, nnodes=3, node_rank=rank, rdzv_endpoint="10.0.0.5:29400"),
                                          environ={}), Path("/d"), Path("/m")) for rank in (0, 2)]
    for rank, command in zip((0, 2), nodes, strict=True):
        assert "--standalone" not in command
        assert {"--nnodes=3", f"--node_rank={rank}", "--nproc_per_node=4", "--rdzv_backend=c10d",
                "--rdzv_endpoint=10.0.0.5:29400", "--rdzv_id=prismrec-train"} <= set(command)
    # Node 0 hosts the rendezvous store, the others join it.
    assert "--rdzv_conf=is_host=1,join_timeout=900" in nodes[0]
    assert "--rdzv_conf=is_host=0,join_timeout=900" in nodes[1]


def test_the_workers_know_their_node_and_local_rank_0_of_node_0_writes_the_model():
    env = worker_env(load_config(settings(nnodes=2, node_rank=1, rdzv_endpoint="h:1"), environ={}), {})
    assert env["PRISMREC_NODE_RANK"] == "1"
    # c10d numbers machines in its own order: node 0 may hold global rank 1 and still writes.
    node0 = Distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "PRISMREC_NODE_RANK": "0"})
    node1 = Distributed.from_environment({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "PRISMREC_NODE_RANK": "1"})
    assert (node0.master, node1.master) == (True, False)
    second_gpu = Distributed.from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "PRISMREC_NODE_RANK": "0"})
    assert not second_gpu.master
    # One machine without the variable: global rank 0, as before.
    assert Distributed.from_environment({"RANK": "0", "WORLD_SIZE": "2"}).master
    assert Distributed.from_environment({}).backend == "gloo"  # CPU here (nccl on a GPU)


@pytest.mark.parametrize(("train", "message"), [
    ({"nnodes": 2}, "train.rdzv_endpoint is unset"),
    ({"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "h:29400"}, "between 0 and train.nnodes - 1 = 1"),
    ({"nnodes": 2, "rdzv_endpoint": "h"}, "HOST:PORT"),
    ({"nnodes": 2, "rdzv_endpoint": "h:99999"}, "HOST:PORT"),
    ({"nnodes": 0}, "train.nnodes must be at least 1"),
])
def test_unusable_multi_node_settings_are_refused_with_what_to_set(train, message):
    with pytest.raises(ConfigError, match=message):
        load_config(settings(**train), environ={})


def test_where_a_process_runs_is_not_what_the_model_learned():
    base = load_config({}, environ={})
    placed = load_config(settings(nnodes=1, node_rank=0, rdzv_endpoint="10.0.0.5:29400"), environ={})
    assert placed.digest() == base.digest()
    assert load_config(settings(nnodes=2, rdzv_endpoint="h:1"), environ={}).digest() != base.digest()


def test_nnodes_and_the_endpoint_are_run_params_flags_and_settings():
    params = dag_params("nnodes", "rdzv_endpoint")
    assert params["rdzv_endpoint"].schema["pattern"] and params["nnodes"].schema["minimum"] == 1
    args = build_parser().parse_args(["train", "--nnodes", "2", "--rdzv-endpoint", "10.0.0.5:29400"])
    assert (args.nnodes, args.rdzv_endpoint) == (2, "10.0.0.5:29400")
    assert overrides_from_params({"nnodes": 2, "rdzv_endpoint": "10.0.0.5:29400"}) == {
        "train.nnodes": 2, "train.rdzv_endpoint": "10.0.0.5:29400"}
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        check_params({"rdzv_endpoint": "not an address"})
    with pytest.raises(ConfigError, match="at least 1"):
        check_params({"nnodes": 0})


def test_train_node_refuses_to_be_node_0(capsys, tmp_path):
    code = main(["train-node", "--dataset", str(tmp_path), "--node-rank", "0", "--nnodes", "2",
                 "--rdzv-endpoint", "127.0.0.1:29400", "--set", f"paths.home={tmp_path}"])
    assert code == 1
    error = capsys.readouterr().err
    assert "node 0 is the pipeline's train task" in error and "\n" not in error.strip()


def test_the_train_task_queue_comes_from_the_environment():
    from tasks.contracts import train_queue

    assert train_queue({"PRISMREC_TRAIN_QUEUE": "gpu"}) == {"queue": "gpu"}
    assert train_queue({"PRISMREC_TRAIN_QUEUE": " "}) == {} == train_queue({})
