"""Staging folders and the atomic publish of a finished checkpoint.

A checkpoint is several files (``P.index``, ``P.data-*``), so no single
rename publishes it.  TensorFlow only sees a checkpoint through its
``.index`` file, which makes the index the commit point: everything is
built in a staging folder beside the destination (same filesystem, so
renames are atomic), then

0. a *journal* (``PUBLISH.json`` in the staging folder) records the file
   names about to move, before anything moves;
1. the previous checkpoint at the destination, if any (``--force``), is
   moved into the staging folder's ``previous/``, index first, so from that
   instant the destination reads as absent rather than as a mix;
2. the new data shards are renamed into place;
3. the new index is renamed into place: the checkpoint now exists, whole;
4. the folder's ``checkpoint`` state file is updated atomically; if that
   fails (a full disk), steps 3-1 are undone, so a failed run never leaves a
   published checkpoint that the state file does not list.  A run killed
   between 3 and 4 is rolled forward by recovery: it writes the state file.

A crash anywhere leaves the destination absent, the complete old
checkpoint, or the complete new one.  A crash in steps 1-2 leaves the
previous checkpoint in ``previous/``; recovery (``ckptsurgery clean``, or the
next run writing the same destination) reads the journal, removes the new
data shards the dead run had moved in and moves the previous checkpoint back,
index last.  Staging folders carry a marker file, so recovery touches ours
and nothing else, and only those whose process is dead.


Modules: :mod:`.staging` (the marked folder), :mod:`.lock` (one run per destination),
:mod:`.liveness` (is the owner alive), :mod:`.journal` (journal and roll-back), :mod:`.commit`
(publish and its undo), :mod:`.statefile` (the ``checkpoint`` file), :mod:`.clean` (recovery).
"""
