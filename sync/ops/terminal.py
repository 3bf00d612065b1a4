"""Text from outside (deliveries, Salesforce, Partnero's API) made safe to print on a terminal."""

from __future__ import annotations

from typing import Any


def safe(value: Any) -> str:
    """``value`` as text an operator's terminal shows as it is: every character that is not
    printable (control characters, the ESC that starts an escape sequence, line breaks,
    bidirectional overrides, zero-width characters…) is written as its escape (``\\x1b``,
    ``\\n``, ``\\u202e``), and a backslash as two, so no value can pass for another or for a line
    of its own. Printable text, in any script, is unchanged.

    Every command's output that includes such text passes it through here.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(char if char.isprintable() and char != "\\" else char.encode("unicode_escape").decode("ascii")
                   for char in text)
