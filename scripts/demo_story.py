"""The seed story, end to end: an old model, a new model with one changed module,
a graph-free transfer, its report, and a restore of the new model that proves it.

Run through ./scripts/demo, which sets everything up first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np  # noqa: E402

from ckptsurgery._tf import import_quietly  # noqa: E402

tf = import_quietly()  # TensorFlow without its C++ start-up chatter
WORK = Path(sys.argv[1] if len(sys.argv) > 1 else ".demo").resolve()


class Encoder(tf.Module):
    def __init__(self, vocab: int, width: int, seed: int):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embedding = tf.Variable(rng.normal(0, 0.02, (vocab, width)).astype(np.float32))
        self.kernel = tf.Variable(rng.normal(0, 0.1, (width, width)).astype(np.float32))
        self.bias = tf.Variable(np.zeros(width, np.float32))

    def __call__(self, ids):
        return tf.nn.relu(tf.matmul(tf.reduce_mean(tf.gather(self.embedding, ids), axis=1), self.kernel) + self.bias)


class Classifier(tf.Module):
    """Encoder + head. Version 2 changes only the head: 3 classes become 5."""

    def __init__(self, classes: int, seed: int):
        super().__init__()
        self.encoder = Encoder(vocab=5000, width=64, seed=seed)
        rng = np.random.default_rng(seed + 1)
        self.head = tf.Variable(rng.normal(0, 0.1, (64, classes)).astype(np.float32))
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)

    def __call__(self, ids):
        return tf.matmul(self.encoder(ids), self.head)


def train(model: Classifier, steps: int) -> None:
    rng = np.random.default_rng(0)
    classes = model.head.shape[1]
    for _ in range(steps):
        ids = rng.integers(0, 5000, (32, 8))
        labels = rng.integers(0, classes, 32)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, model(ids)))
        for var, grad in zip(model.trainable_variables, tape.gradient(loss, model.trainable_variables)):
            var.assign_sub(0.5 * tf.convert_to_tensor(grad))
        model.step.assign_add(1)


def sh(*args: str) -> subprocess.CompletedProcess:
    """Run the real ckptsurgery command, showing it like a terminal would."""
    print(f"\n$ ckptsurgery {' '.join(args)}", flush=True)
    run = subprocess.run([sys.executable, "-m", "ckptsurgery", *args], text=True)
    if run.returncode != 0:
        sys.exit(f"demo: ckptsurgery {args[0]} failed with exit code {run.returncode}")
    return run


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rel = lambda p: os.path.relpath(p, Path.cwd())  # noqa: E731

    print("1. Train the old model (3 classes) and checkpoint it with tf.train.Checkpoint.")
    old = Classifier(classes=3, seed=1)
    train(old, steps=20)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=old), str(WORK / "old"), 3).save()

    print("2. The new model changes one module (the head: 5 classes). Checkpoint it as initialized.")
    new = Classifier(classes=5, seed=2)
    new_init = tf.train.Checkpoint(model=new).save(str(WORK / "new_init" / "ckpt"))

    sh("inspect", rel(WORK / "old"), "--tree")
    sh("transfer", "--from", rel(WORK / "old"), "--into", rel(new_init), "--out", rel(WORK / "warm" / "ckpt"), "--dry-run")
    sh("transfer", "--from", rel(WORK / "old"), "--into", rel(new_init), "--out", rel(WORK / "warm" / "ckpt"),
       "--report", rel(WORK / "report.json"))

    print("\n3. Restore the new model from the transferred checkpoint and prove it.")
    report = json.loads((WORK / "report.json").read_text())
    warm = Classifier(classes=5, seed=3)
    tf.train.Checkpoint(model=warm).restore(tf.train.latest_checkpoint(str(WORK / "warm"))).assert_consumed()
    checks = {
        "encoder.embedding == old": np.array_equal(warm.encoder.embedding.numpy(), old.encoder.embedding.numpy()),
        "encoder.kernel    == old": np.array_equal(warm.encoder.kernel.numpy(), old.encoder.kernel.numpy()),
        "encoder.bias      == old": np.array_equal(warm.encoder.bias.numpy(), old.encoder.bias.numpy()),
        "head (64x5)       == new init": np.array_equal(warm.head.numpy(), new.head.numpy()),
        "step              == old": int(warm.step.numpy()) == 20,
    }
    for label, ok in checks.items():
        print(f"   {'ok ' if ok else 'BAD'} {label}")
    print(f"   report: {report['counts']}")

    print("\n4. Retrain only the changed module: freeze exactly what was transferred.")
    import ckptsurgery as cs

    by_key = cs.variables_by_key(tf.train.Checkpoint(model=warm))  # the report's names -> live variables
    transferred = {item["name"] for item in report["transferred"]}
    trainable = [v for key, v in by_key.items() if key not in transferred and v.trainable]
    frozen = sorted(key.split("/.ATTRIBUTES")[0] for key in by_key if key in transferred)
    print("   frozen:  ", frozen)
    print("   training:", [tuple(v.shape) for v in trainable])
    checks["only the head trains"] = len(trainable) == 1 and trainable[0] is warm.head
    if not all(checks.values()):
        sys.exit("demo: the restored model does not match")
    print(f"\nDone. Files are in {rel(WORK)}/.")


if __name__ == "__main__":
    main()
