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
from dataclasses import dataclass, field

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


# -- Tying slots to their variables --------------------------------------------------------
@dataclass
class SlotTies:
    """Which optimizer slot belongs to which variable, by source checkpoint key.

    ``tied`` maps a slot's key to its variable's key.  ``loose`` holds keys
    that look like per-variable optimizer state (non-scalar optimizer keys)
    but whose variable the checkpoint does not let us identify; a cast or
    resize that could concern them refuses rather than guessing.
    """

    tied: dict[str, str] = field(default_factory=dict)
    loose: set[str] = field(default_factory=set)


def tie_slots(ckpt) -> SlotTies:
    """Find every slot's variable in ``ckpt`` (a :class:`~ckptsurgery.io.reader.Checkpoint`); reads only the index
    and the object graph.

    * TF1 name-based: ``<var>/Adam``, ``<var>/Adam_1``, ``<var>/adam_m``,
      ``<var>/Momentum``... belong to ``<var>`` when that key exists.
    * TF2 ``slot_variables`` links in the object graph (``.OPTIMIZER_SLOT`` keys).
    * Keras 3: element *i* of ``_momentums``/``_velocities``/... belongs to
      element *i* of the optimizer's ``_trainable_variables`` (same shape and
      dtype required).
    * tf_keras's current optimizers record no link at all; element *i* of its
      slot lists is tied only when its shape and dtype identify exactly one
      model variable and no other index has them (shapes that repeat, as in
      stacked layers of one width, stay loose).
    """
    from .objectgraph import graph_slot_links, keras_slot_lists
    from ..io.reader import OBJECT_GRAPH_KEY

    names = {t.name for t in ckpt if t.name != OBJECT_GRAPH_KEY}
    ties = SlotTies()
    for name in names:
        match = _TF1_SLOT.search(name)
        if match and "/.ATTRIBUTES/" not in name:
            variable = _tf1_variable_of(ckpt, names, name, name[:match.start()])
            if variable:
                ties.tied[name] = variable
    graph_bytes = ckpt.read_object_graph() if OBJECT_GRAPH_KEY in ckpt else None
    if graph_bytes:
        ties.tied.update({s: v for s, v in graph_slot_links(graph_bytes).items() if s in names and v in names})
        for trainable, slot_lists in keras_slot_lists(graph_bytes):
            _tie_keras_lists(ckpt, names, trainable, slot_lists, ties.tied)
    for name in names:
        if name not in ties.tied and is_optimizer_state(name) and ckpt.info(name).shape != ():
            ties.loose.add(name)
    return ties


def _tf1_variable_of(ckpt, names: set[str], slot: str, base: str) -> str | None:
    """The variable of TF1 slot ``slot`` (``base`` + ``/Adam``...), or None.

    A slot is ``<var>/Adam``, or ``<scope>/<var>/Adam`` when ``minimize`` ran
    inside a name scope (``training/``, ``OptimizeLoss/``, ``train_op/``).
    A scoped slot is tied only when exactly one such ``<var>`` exists and
    has the slot's shape and dtype.
    """
    if base in names:
        return base
    parts = base.split("/")
    candidates = ["/".join(parts[i:]) for i in range(1, len(parts))]
    found = [c for c in candidates if c in names and not is_optimizer_state(c)]
    if len(found) != 1:
        return None
    mine, theirs = ckpt.info(slot), ckpt.info(found[0])
    return found[0] if (mine.dtype, tuple(mine.shape)) == (theirs.dtype, tuple(theirs.shape)) else None


def _tie_keras_lists(ckpt, names: set[str], trainable, slot_lists, tied: dict[str, str]) -> None:
    def signature(key):
        info = ckpt.info(key)
        return info.dtype, tuple(info.shape)

    slot_lists = [[k if k in names else None for k in elements] for elements in slot_lists]
    if trainable is not None:
        for elements in slot_lists:
            if len(elements) != len(trainable):
                continue
            for slot, variable in zip(elements, trainable):
                if slot and variable in names and signature(slot) == signature(variable):
                    tied[slot] = variable
        return
    # tf_keras: no _trainable_variables; tie by a signature that is unique on both sides.
    if not slot_lists or len({len(e) for e in slot_lists}) != 1 or any(k is None for e in slot_lists for k in e):
        return
    per_index = []
    for index in range(len(slot_lists[0])):
        signatures = {signature(e[index]) for e in slot_lists}
        if len(signatures) != 1:
            return  # lists disagree (factored slots such as Adafactor's): not per-variable copies
        per_index.append(signatures.pop())
    model_variables: dict[tuple, list[str]] = {}
    for key in names:
        if not is_optimizer_state(key) and ckpt.info(key).shape != ():
            model_variables.setdefault(signature(key), []).append(key)
    for index, sig in enumerate(per_index):
        if per_index.count(sig) == 1 and len(model_variables.get(sig, [])) == 1:
            for elements in slot_lists:
                tied[elements[index]] = model_variables[sig][0]
