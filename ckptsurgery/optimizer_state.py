"""Recognise optimizer state by checkpoint key, for TF1 and TF2 layouts.

Optimizer state is usually two to three times the model's weights and is
useless to a model that will be fine-tuned with a fresh optimizer, so
dropping it is the most common surgery.  Keys are recognised by name only
(no tensor data, no graph), from the layouts real TensorFlow code writes:

* TF1 ``tf.train`` optimizers put slots beside the variable:
  ``dense/kernel/Adam``, ``dense/kernel/Adam_1``, ``.../Momentum``,
  ``.../RMSProp``, ``.../Adagrad``, ``.../Ftrl_1``; BERT's AdamW writes
  ``.../adam_m`` and ``.../adam_v``; Adam's ``beta1_power``/``beta2_power``
  may sit under a scope (``training/beta1_power``).
* TF1 Keras optimizers are variables under the optimizer's scope:
  ``Adam/iterations``, ``SGD/lr``, ``training/Adam/...``.
* TF2 object-based checkpoints store slots as
  ``layer/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE`` and
  the optimizer's own variables under its attribute path
  (``optimizer/iter``, ``generator_optimizer/beta_1``, Keras 3's
  ``optimizer/_variables/3`` and ``optimizer/_iterations``).  Keras 3 also
  reaches the *model's* variables through ``optimizer/_trainable_variables/N``;
  those are weights, not optimizer state, and are kept.
"""

from __future__ import annotations

import re

_TF1_SLOT = re.compile(
    r"/(Adam|Adam_\d+|adam_m|adam_v|Momentum|RMSProp|RMSProp_\d+|Adagrad|AdagradDA|AdagradDA_\d+"
    r"|Adadelta|Adadelta_\d+|Ftrl|Ftrl_\d+|ProximalAdagrad|LazyAdam|LazyAdam_\d+|ExponentialMovingAverage)$"
)
_TF1_POWERS = re.compile(r"(^|/)(beta1_power|beta2_power)(_\d+)?$")
_TF1_KERAS = re.compile(r"^(training(_\d+)?/)?(Adam|SGD|RMSprop|Adagrad|Adadelta|Adamax|Nadam|Ftrl)(_\d+)?/")
_TF2_ATTRIBUTE_PATH = re.compile(r"^(?P<path>.*?)/\.ATTRIBUTES/")
_TF2_OPTIMIZER_NODE = re.compile(r"(^|/)[^/]*optimizer[^/]*(/|$)", re.IGNORECASE)


def is_optimizer_state(key: str) -> bool:
    """True when ``key`` holds optimizer state rather than model weights.

    >>> is_optimizer_state("bert/encoder/layer_0/kernel/adam_m")
    True
    >>> is_optimizer_state("dense/kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE")
    True
    >>> is_optimizer_state("optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE")
    False
    >>> is_optimizer_state("global_step")
    False
    """
    if "/.OPTIMIZER_SLOT/" in key:
        return True
    attribute = _TF2_ATTRIBUTE_PATH.match(key)
    if attribute:
        path = attribute.group("path")
        return bool(_TF2_OPTIMIZER_NODE.search(path)) and "_trainable_variables" not in path
    return bool(_TF1_SLOT.search(key) or _TF1_POWERS.search(key) or _TF1_KERAS.match(key))
