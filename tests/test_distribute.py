"""`train --distribute`: MultiWorkerMirroredStrategy with two real TF workers on localhost, on the CPU.

MultiWorkerMirroredStrategy must be created before TensorFlow runs anything in a process, so
those runs are fresh `edgecnn train` processes configured by TF_CONFIG, as on a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecnn.distribute import DistributeError, distribution, parse_tf_config, wait_for_peers
from edgecnn.errors import SettingError


ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _worker(index: int, ports: list[int], data: Path, out: Path, timeout: float = 60, epochs: int = EPOCHS):
    tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    env = dict(os.environ, TF_CONFIG=json.dumps(tf_config), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecnn.cli",
            "train",
            str(data),
            "--distribute",
            "multiworker",
            "--epochs",
            str(epochs),
            "--patience",
            "0",
            "--out",
            str(out),
            "--distribute-timeout",
            str(timeout),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, digits_data):
    data = digits_data
    out = tmp_path_factory.mktemp("multiworker") / "digits"
    ports = _free_ports(2)
    workers = [_worker(i, ports, data, out) for i in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    return out, workers, results, data


def test_two_workers_train_one_model_folder_written_by_the_chief_only(two_workers):
    out, workers, results, _ = two_workers
    for w, (stdout, stderr) in zip(workers, results):
        assert w.returncode == 0, stderr[-2000:]
    chief, other = (json.loads(stdout) for stdout, _ in results)
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.txt",
        "confusion_matrix.png",
        "metadata.json",
        "model.keras",
        "training_curves.png",
    ]
    assert not list(out.parent.glob(".digits*"))  # no temporary left beside it
    record = json.loads((out / "metadata.json").read_text())
    assert record["training"]["config"]["distribute"] == "multiworker"
    assert record["training"]["distribute"] == {
        "strategy": "multiworker",
        "replicas": 2,
        "workers": 2,
        "global_batch_size": 64,
    }
    assert record["training"]["final_val_accuracy"] == chief["val_accuracy"]
    assert other["val_accuracy"] == chief["val_accuracy"]  # the same weights on both workers
    chief_log, other_log = results[0][1], results[1][1]
    assert (
        "distribute: multiworker, 2 replica(s) on 2 workers (worker 0, chief), global batch 64 = 32 per replica x 2"
        in chief_log
    )
    assert "this worker's copy goes to a scratch folder" in other_log


def test_two_workers_learn_as_well_as_one_process_and_mirrored_on_the_cpu_says_it_runs_one_replica(
    two_workers, tmp_path
):
    import tensorflow as tf

    from edgecnn.train import TrainConfig, train

    out, _, results, data = two_workers
    log: list[str] = []
    single = train(
        TrainConfig(
            data_dir=str(data),
            out=str(tmp_path / "single"),
            epochs=EPOCHS,
            batch_size=64,
            early_stopping_patience=0,
            verbose=0,
            distribute="mirrored",
        ),
        log=log.append,
    )
    if not tf.config.list_physical_devices("GPU"):
        assert (
            "distribute: mirrored, 1 replica(s), global batch 64 = 64 per replica x 1; no GPU visible: "
            "MirroredStrategy runs one replica on the CPU, the same as --distribute none"
        ) in log
    distributed = json.loads(results[0][0])["val_accuracy"]
    assert distributed > 0.5  # it learned: ten classes, chance is 0.1
    assert abs(distributed - single.val_accuracy) < 0.1, (distributed, single.val_accuracy)


def test_a_missing_chief_or_a_missing_worker_is_an_error_within_the_timeout_never_a_hang(tmp_path, digits_data):
    data = digits_data
    started = time.monotonic()
    alone = {
        "worker": _worker(1, _free_ports(2), data, tmp_path / "w", timeout=3),  # its chief never starts
        "chief": _worker(0, _free_ports(2), data, tmp_path / "c", timeout=3),
    }  # its worker never starts
    done = {name: w.communicate(timeout=120) for name, w in alone.items()}
    assert time.monotonic() - started < 60
    for name, w in alone.items():
        stderr = done[name][1]
        assert w.returncode == 1, stderr[-2000:]
        assert "Traceback" not in stderr
    assert "error: worker 0 at localhost:" in done["worker"][1] and "did not answer within 3 s" in done["worker"][1]
    assert "error: worker 1 at localhost:" in done["chief"][1] and "did not answer within 3 s" in done["chief"][1]
    assert not (tmp_path / "w").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{cluster: 1}", "TF_CONFIG is not JSON"),
        ('{"task": {"type": "worker", "index": 0}}', 'no "cluster" object'),
        ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', '"host:port" strings'),
        (
            '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
            "task worker 2 is not in the cluster",
        ),
        ('{"cluster": {"worker": ["a:1"]}}', 'no "task"'),
    ],
)
def test_a_malformed_tf_config_is_a_one_line_error(text, message):
    with pytest.raises(DistributeError, match=message) as caught:
        parse_tf_config(text)
    assert "\n" not in str(caught.value)


def test_the_chief_is_the_chief_task_or_else_worker_0():
    assert parse_tf_config('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}').is_chief
    with_chief = '{"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}'
    assert not parse_tf_config(with_chief).is_chief
    assert parse_tf_config(with_chief).leader() == ("chief 0", "c:1")


def test_wait_for_peers_names_the_silent_one_after_the_timeout():
    (port,) = _free_ports(1)
    started = time.monotonic()
    with pytest.raises(DistributeError, match=f"worker 1 at 127.0.0.1:{port} did not answer within 0.5 s"):
        wait_for_peers([("worker 1", f"127.0.0.1:{port}")], 0.5)
    assert time.monotonic() - started < 5


def test_mirrored_on_a_cpu_only_machine_runs_one_replica_and_says_so():
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is visible: mirrored uses it")
    plan = distribution("mirrored")
    assert plan.replicas == 1 and plan.is_chief and not plan.custom_loop
    assert plan.describe(32) == (
        "distribute: mirrored, 1 replica(s), global batch 32 = 32 per replica x 1; no GPU visible: "
        "MirroredStrategy runs one replica on the CPU, the same as --distribute none"
    )


def test_an_unknown_strategy_is_a_one_line_error():
    with pytest.raises(SettingError, match="^distribute ring: expected one of none, mirrored, multiworker$"):
        distribution("ring")
