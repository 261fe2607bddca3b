"""`edgecnn train --distribute`: train on several GPUs (MirroredStrategy) or hosts (MultiWorkerMirroredStrategy).

One registry entry per strategy, each returning a `Distribution`: what `train` needs to know
(the scope to build and fit the model in, the number of replicas, whether this process is the
chief) and nothing else. The multi-worker strategy is configured by the standard ``TF_CONFIG``
environment variable, as Kubernetes operators and TensorFlow's own docs set it:

    {"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}

Global batch = per-replica batch x replicas; each worker reads its shard of every global batch
(tf.data auto-shard policy DATA: the data are in-memory arrays, not files). Only the chief
(task "chief", or worker 0 when there is none) writes the model folder; the other workers
write theirs to a scratch folder that is removed.

Never a hang: TensorFlow's start-up barrier (every task registering with the chief) holds the
interpreter and, in TensorFlow 2.21, honours no deadline. So before any task creates the
strategy, connect checks settle who is there: the chief answers on its port and waits up to
`timeout_s` for every worker's server; each worker waits up to `timeout_s` for the chief, then
starts its server (which the chief's check sees). A task that is missing is a one-line error
naming it. A worker lost during training fails the collective ops after `timeout_s`. What is
left: a task that dies between passing the checks and registering (a second or so).

Over 400 lines: one idea (training across tf.distribute workers: the plan, the cluster
wiring, the chief-only write); splitting it would pass the plan through several modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgecnn.errors import EdgecnnError, check_above
from edgecnn.registry import Registry

DEFAULT_TIMEOUT_S = 120.0


class DistributeError(EdgecnnError):
    """A TF_CONFIG or a cluster that cannot be used for distributed training."""


@dataclass(frozen=True)
class TfConfig:
    """The parsed ``TF_CONFIG``: the cluster's addresses by task type, and this process's task."""

    cluster: dict[str, tuple[str, ...]]
    task_type: str
    task_index: int

    @property
    def is_chief(self) -> bool:
        return self.task_type == "chief" or (
            "chief" not in self.cluster and self.task_type == "worker" and self.task_index == 0
        )

    @property
    def workers(self) -> int:
        return sum(len(self.cluster.get(kind, ())) for kind in ("chief", "worker"))

    def address(self) -> str:
        return self.cluster[self.task_type][self.task_index]

    def leader(self) -> tuple[str, str]:
        """(name, host:port) of the chief: task "chief", or worker 0 when there is none."""
        kind = "chief" if self.cluster.get("chief") else "worker"
        return f"{kind} 0", self.cluster[kind][0]

    def peers(self) -> list[tuple[str, str]]:
        """(name, host:port) of every other task in the cluster."""
        return [
            (f"{kind} {i}", address)
            for kind, addresses in self.cluster.items()
            for i, address in enumerate(addresses)
            if (kind, i) != (self.task_type, self.task_index)
        ]


_TF_CONFIG_EXAMPLE = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'


def parse_tf_config(text: str | None) -> TfConfig:
    """``TF_CONFIG``'s text -> `TfConfig`, or a one-line `DistributeError` saying what is wrong."""
    if not text or not text.strip():
        raise DistributeError(
            f"--distribute multiworker needs the TF_CONFIG environment variable, e.g. {_TF_CONFIG_EXAMPLE}"
        )
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DistributeError(f"TF_CONFIG is not JSON ({exc}); expected e.g. {_TF_CONFIG_EXAMPLE}") from None
    cluster, task = (data.get("cluster"), data.get("task")) if isinstance(data, dict) else (None, None)
    if not isinstance(cluster, dict) or not cluster:
        raise DistributeError(f'TF_CONFIG has no "cluster" object of task lists; expected e.g. {_TF_CONFIG_EXAMPLE}')
    parsed: dict[str, tuple[str, ...]] = {}
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and _host_port(a) for a in addresses):
            raise DistributeError(
                f'TF_CONFIG cluster.{kind} must be a list of "host:port" strings, got {json.dumps(addresses)}'
            )
        parsed[kind] = tuple(addresses)
    if not isinstance(task, dict) or not isinstance(task.get("type"), str) or not isinstance(task.get("index"), int):
        raise DistributeError(
            f'TF_CONFIG has no "task": {{"type": ..., "index": ...}}; expected e.g. {_TF_CONFIG_EXAMPLE}'
        )
    kind, index = task["type"], task["index"]
    if kind not in parsed or not 0 <= index < len(parsed[kind]):
        raise DistributeError(
            f"TF_CONFIG task {kind} {index} is not in the cluster "
            f"({', '.join(f'{k}: {len(v)}' for k, v in parsed.items())})"
        )
    if not parsed.get("worker") and not parsed.get("chief"):
        raise DistributeError('TF_CONFIG cluster lists no "worker" (nor "chief") tasks')
    return TfConfig(parsed, kind, index)


def _host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


def wait_for_peers(peers: list[tuple[str, str]], timeout_s: float, poll_s: float = 0.25) -> None:
    """Return once every peer accepts a TCP connection; a `DistributeError` naming the silent ones after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    waiting = dict(peers)
    while waiting:
        for name, address in list(waiting.items()):
            host, port = _host_port(address)
            try:
                with socket.create_connection((host, port), timeout=min(1.0, timeout_s)):
                    del waiting[name]
            except OSError:
                pass
        if not waiting:
            return
        if time.monotonic() >= deadline:
            silent = ", ".join(f"{name} at {address}" for name, address in waiting.items())
            raise DistributeError(
                f"{silent} did not answer within {timeout_s:g} s; start every task listed in "
                "TF_CONFIG (same cluster, own task index), check the addresses, or raise --distribute-timeout"
            )
        time.sleep(poll_s)


@dataclass
class Distribution:
    """How this process trains: in `scope()`, on `replicas` replicas, as the chief or not."""

    name: str
    strategy: object | None = None
    replicas: int = 1
    workers: int = 1
    is_chief: bool = True
    task: str = ""
    notes: list[str] = field(default_factory=list)

    def scope(self):
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    def shard(self, dataset):
        """Each worker reads its part of every global batch (policy DATA: in-memory arrays have no files to split)."""
        if self.workers <= 1:
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    @contextlib.contextmanager
    def output_dir(self, out: Path) -> Iterator[Path]:
        """`out` for the chief; for the other workers a scratch folder, removed afterwards."""
        if self.is_chief:
            yield out
            return
        scratch = Path(tempfile.mkdtemp(prefix="edgecnn-worker-"))
        try:
            yield scratch / out.name
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @property
    def custom_loop(self) -> bool:
        """Keras 3's `fit` cannot run MultiWorkerMirroredStrategy (keras-team/keras#20585: each
        step reduces its scalar metrics "over axis 0"): several workers train with `fit_loop`."""
        return self.workers > 1

    def fit_loop(
        self,
        model,
        train_ds,
        val_ds,
        learning_rate: float,
        epochs: int,
        patience: int,
        on_epoch: Callable[[int, dict], None] = lambda epoch, logs: None,
    ) -> dict:
        """TensorFlow's custom training loop for MultiWorkerMirroredStrategy: Adam on the mean
        sparse cross-entropy of the global batch (gradients all-reduced by the optimizer), loss
        and accuracy summed over all workers, early stopping on val_loss keeping the best weights."""
        import keras
        import tensorflow as tf

        strategy = self.strategy
        with strategy.scope():
            optimizer = keras.optimizers.Adam(learning_rate)
            optimizer.build(model.trainable_variables)
        cross_entropy = keras.losses.SparseCategoricalCrossentropy(reduction=None)

        def sums(x, y, probabilities):
            per_example = cross_entropy(y, probabilities)
            correct = tf.cast(
                tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int64), tf.cast(y, tf.int64)), tf.float32
            )
            return per_example, tf.stack(
                [tf.reduce_sum(per_example), tf.reduce_sum(correct), tf.cast(tf.size(y), tf.float32)]
            )

        def train_replica(x, y):
            with tf.GradientTape() as tape:
                probabilities = model(x, training=True)
                per_example, totals = sums(x, y, probabilities)
                loss = tf.nn.compute_average_loss(per_example)
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return totals

        def test_replica(x, y):
            return sums(x, y, model(x, training=False))[1]

        @tf.function
        def train_step(iterator):
            return strategy.reduce("SUM", strategy.run(train_replica, args=next(iterator)), axis=None)

        @tf.function
        def test_step(iterator):
            return strategy.reduce("SUM", strategy.run(test_replica, args=next(iterator)), axis=None)

        def run_epoch(step, dataset) -> tuple[float, float]:
            totals = np.zeros(3)
            iterator = iter(strategy.experimental_distribute_dataset(dataset))
            for _ in range(_batches(dataset)):
                totals += step(iterator).numpy()
            return totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)

        history: dict[str, list[float]] = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        best, best_weights, waited = np.inf, None, 0
        for epoch in range(epochs):
            loss, accuracy = run_epoch(train_step, train_ds)
            val_loss, val_accuracy = run_epoch(test_step, val_ds)
            logs = {"accuracy": accuracy, "loss": loss, "val_accuracy": val_accuracy, "val_loss": val_loss}
            for key, value in logs.items():
                history[key].append(float(value))
            on_epoch(epoch, logs)
            if patience > 0:  # every worker sees the same global numbers, so all stop together
                if val_loss < best:
                    best, best_weights, waited = val_loss, model.get_weights(), 0
                else:
                    waited += 1
                    if waited >= patience:
                        break
        if best_weights is not None:
            model.set_weights(best_weights)
        return history

    def predict(self, model, images, batch_size: int = 256):
        """Probabilities computed on this worker alone (no collectives): for the final report."""
        if not isinstance(images, np.ndarray):
            return np.concatenate([np.asarray(model(x, training=False)) for x, _ in images])
        return np.concatenate(
            [
                np.asarray(model(images[i : i + batch_size].astype(np.float32), training=False))
                for i in range(0, len(images), batch_size)
            ]
        )

    def describe(self, per_replica: int) -> str:
        line = (
            f"distribute: {self.name}, {self.replicas} replica(s)"
            f"{f' on {self.workers} workers' if self.workers > 1 else ''}{f' ({self.task})' if self.task else ''}, "
            f"global batch {self.global_batch(per_replica)} = {per_replica} per replica x {self.replicas}"
        )
        return "; ".join([line] + self.notes)


def _batches(dataset) -> int:
    """Steps in one pass over a finite tf.data dataset (the same count on every worker: DATA sharding
    gives each worker a part of every global batch)."""
    import tensorflow as tf

    n = int(dataset.cardinality())
    if n < 0:  # unknown (streaming from files): count once
        n = int(dataset.reduce(np.int64(0), lambda count, _: count + 1))
    return n if n != tf.data.INFINITE_CARDINALITY else 0


# -- the strategies: one function each, chosen by name ---------------------------------------
STRATEGIES: Registry[Callable[[float], Distribution]] = Registry("distribute")
strategy = STRATEGIES.register  # @strategy("name") on a fn(timeout_s) -> Distribution


def distribution(name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Distribution:
    """The `Distribution` for `--distribute NAME`. Call it before any other TensorFlow op
    (MultiWorkerMirroredStrategy must configure TensorFlow's collective ops at startup)."""
    make = STRATEGIES[name]  # an unknown name: a SettingError listing the strategies
    check_above("distribute_timeout_s", timeout_s, 0, "seconds")
    return make(timeout_s)


@strategy("none")
def _single(timeout_s: float) -> Distribution:
    return Distribution("none")


@strategy("mirrored")
def _mirrored(timeout_s: float) -> Distribution:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    mirrored = tf.distribute.MirroredStrategy()
    notes = (
        [] if gpus else ["no GPU visible: MirroredStrategy runs one replica on the CPU, the same as --distribute none"]
    )
    return Distribution("mirrored", mirrored, replicas=mirrored.num_replicas_in_sync, notes=notes)


@strategy("multiworker")
def _multiworker(timeout_s: float) -> Distribution:
    config = parse_tf_config(os.environ.get("TF_CONFIG"))
    import tensorflow as tf

    if config.is_chief:  # answer on this task's port while waiting: the workers wait for the chief first
        with _answering(config.address()):
            wait_for_peers(config.peers(), timeout_s)
    else:
        wait_for_peers([config.leader()], timeout_s)
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_s)
    try:
        multi = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (RuntimeError, ValueError) as exc:
        raise DistributeError(
            f"cannot start MultiWorkerMirroredStrategy ({_first_line(exc)}); "
            "it must be created before TensorFlow runs anything else in this process"
        ) from None
    task = f"{config.task_type} {config.task_index}{', chief' if config.is_chief else ''}"
    notes = (
        [] if config.is_chief else ["the chief writes the model folder; this worker's copy goes to a scratch folder"]
    )
    return Distribution(
        "multiworker",
        multi,
        replicas=multi.num_replicas_in_sync,
        workers=config.workers,
        is_chief=config.is_chief,
        task=task,
        notes=notes,
    )


@contextlib.contextmanager
def _answering(address: str) -> Iterator[None]:
    """Listen on `address`'s port (all interfaces) until the block ends, so that the other tasks'
    connect checks see this task before TensorFlow's server takes the port over."""
    _, port = _host_port(address)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
        listener.listen(64)
    except OSError as exc:
        listener.close()
        raise DistributeError(
            f"cannot listen on port {port} of this task ({address} in TF_CONFIG): "
            f"{exc.strerror or exc}; free the port or change TF_CONFIG"
        ) from None
    try:
        yield
    finally:
        listener.close()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
