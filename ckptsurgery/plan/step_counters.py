"""Recognise step counters by checkpoint key: the variables that say how far a run has trained.

A warm start is a new training run.  Its learning-rate schedule, warm-up and
decay read the step counter, so carrying an old run's ``global_step`` of
1,000,000 into the new model silently puts its schedule at the end.
:func:`ckptsurgery.transfer` therefore keeps the new model's counters unless
asked otherwise, and ``edit``'s dropped summary counts them apart.

Counters recognised, always integer scalars:

* TF1: ``global_step`` (``tf.compat.v1.train.get_or_create_global_step``);
  Keras-TF1 optimizers' ``Adam/iterations``, ``training/Adam/iterations``,
  ``training/SGD/iter``.
* TF2 object-based keys: ``save_counter`` (``tf.train.Checkpoint``), a
  root-level ``step`` or ``global_step`` (the ``tf.train.Checkpoint(step=...)``
  idiom of TF's guides), and the optimizer's iteration count:
  ``optimizer/iter`` (tf.keras 2), ``optimizer/_iterations`` (Keras 3).
* Live Keras 3 variables, named by their path: ``adam/iteration``.
"""

from __future__ import annotations

import re

_INTEGER_DTYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_TF2_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_OPTIMIZER_SCOPE = (r"(?:[^/]*optimizer[^/]*|adam|adamw|sgd|rmsprop|adagrad|adadelta|adamax|nadam|ftrl|lion"
                    r"|adafactor|lamb|momentum)(?:_\d+)?")
_OPTIMIZER_ITERATIONS = re.compile(rf"(?:^|/){_OPTIMIZER_SCOPE}/(?:iter|iterations|_iterations|iteration)$",
                                   re.IGNORECASE)
_GLOBAL_STEP = re.compile(r"(?:^|/)global_step$")
_ROOT_COUNTER = re.compile(r"^(?:step|save_counter)$")


def is_step_counter(name: str, dtype: str | None = None, shape: tuple[int, ...] | None = None) -> bool:
    """True when ``name`` is a training step counter (see module doc).

    ``dtype`` and ``shape``, when given, must be an integer scalar's: a
    float ``step`` tensor is a weight, not a counter.

    >>> is_step_counter("global_step", "int64", ())
    True
    >>> is_step_counter("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")
    True
    >>> is_step_counter("model/encoder/step/.ATTRIBUTES/VARIABLE_VALUE")
    False
    >>> is_step_counter("global_step", "float32", (3,))
    False
    """
    if dtype is not None and dtype not in _INTEGER_DTYPES:
        return False
    if shape is not None and tuple(shape) != ():
        return False
    path = name[: -len(_TF2_SUFFIX)] if name.endswith(_TF2_SUFFIX) else name
    if _GLOBAL_STEP.search(path) or _OPTIMIZER_ITERATIONS.search(path):
        return True
    if path == name:  # a TF1 name or a live variable's path: only the patterns above
        return False
    return bool(_ROOT_COUNTER.match(path) or path.endswith("/save_counter"))
