"""Names as the terminal should see them: control characters escaped.

Tensor names are input.  TensorFlow stores any bytes in a key, so a name can
hold a newline (a one-line error becomes two), a carriage return (a table row
overwrites itself) or an escape sequence (``\\x1b[2J`` clears the screen,
``\\x1b]8;;`` plants a link), and a bidi override (U+202E) reverses the text
after it.  Every human-facing line that quotes a name passes it through
:func:`display_name`; ``--json`` output keeps names exact, since a JSON
encoder escapes control characters itself.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def display_name(text: str) -> str:
    """``text`` with every non-printable character written as a Python-style escape.

    Escapes C0 and C1 controls, DEL, and what Unicode calls non-printable
    (format characters such as bidi overrides and zero-width joiners,
    separators other than the ASCII space, unassigned code points); printable
    text, accents and CJK included, is left alone.  Backslashes are not
    doubled, so ordinary names read as they are written.

    >>> display_name("dense/kernel")
    'dense/kernel'
    >>> print(display_name("a\\nb\\x1b[31m\\u202e"))
    a\\nb\\x1b[31m\\u202e
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def display_text(text: object) -> str:
    """A whole message (an error, say) made safe for one terminal line: ``display_name(str(text))``."""
    return display_name(str(text))
