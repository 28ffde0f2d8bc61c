"""Names the remote filesystem layer gives its own working files (importable without TensorFlow)."""

#: Temp objects of :meth:`GFileFS.write_bytes`: ``NAME.ckptsurgery-tmp-HEX`` (``clean`` removes stale ones).
TMP_INFIX = ".ckptsurgery-tmp-"
