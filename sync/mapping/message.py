"""A notification's message template (``new sale by {partner}: {amount:,.2f} {currency}``): checked
once, rendered from values already computed. Pure: nothing but names and safe format specs."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

#: A template's own length, and the longest message it renders (longer is cut, with "…").
MAX_TEMPLATE = 1000
MAX_MESSAGE = 4000
#: A field the template names: a plain name, as a notification's ``fields`` keys are.
NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: A format spec we accept: [align][sign][#][0][width][grouping][.precision][type], no fill
#: character, no nested field, width under 1000 (what a spec may ask for stays small).
SAFE_SPEC = re.compile(r"(?P<align>[<>=^])?[+\- ]?#?0?(?P<width>\d{1,3})?(?P<group>[,_])?(?:\.\d{1,2})?"
                       r"(?P<type>[bdeEfFgGnosxX%])?")
#: Format types (and grouping) that only a number takes.
NUMBER_TYPES = frozenset("bdeEfFgGnoxX%")
#: The field types whose values a number's format spec takes.
NUMBER_FIELDS = frozenset({"integer", "decimal"})


@dataclass(frozen=True)
class Part:
    """Literal text, then (unless ``name`` is None) one field's value formatted by ``spec``."""

    literal: str
    name: str | None
    spec: str


@dataclass(frozen=True)
class Template:
    source: str
    parts: tuple[Part, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """The fields the template shows, in order, each once."""
        return tuple(dict.fromkeys(p.name for p in self.parts if p.name is not None))

    def numeric(self, name: str) -> str | None:
        """A format spec of ``name`` that only a number takes (``,.2f``); None when it has none."""
        return next((p.spec for p in self.parts if p.name == name and needs_number(p.spec)), None)

    def render(self, values: dict[str, Any], escape: Callable[[str], str] = str) -> str:
        """The message with each field's value in place, passed through ``escape`` (the template's
        own text is not), cut at ``MAX_MESSAGE`` characters. Raises ``ValueError`` naming the field
        (never its value) when a value does not take its spec."""
        out = []
        for part in self.parts:
            out.append(part.literal)
            if part.name is not None:
                out.append(escape(shown(part.name, values.get(part.name), part.spec)))
        text = "".join(out)
        return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def slack_escaped(value: str) -> str:
    """A value as Slack's message text must carry it: ``&``, ``<`` and ``>`` escaped, so a value
    (a partner's name) can never become a link or a mention such as ``<!channel>``."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


#: How a value is escaped in each body format whose text is markup (the others take it as it is).
ESCAPES: dict[str, Callable[[str], str]] = {"slack": slack_escaped}


def needs_number(spec: str) -> bool:
    found = SAFE_SPEC.fullmatch(spec)
    return bool(found) and (found["type"] in NUMBER_TYPES or found["group"] is not None or found["align"] == "=")


def parse(text: Any) -> tuple[Template | None, str | None]:
    """``text`` as a template, or why it is not one: only ``{name}`` and ``{name:spec}`` with a
    safe spec (no attribute or index, no conversion, no nested field, no positional field)."""
    if not isinstance(text, str) or not text.strip():
        return None, "must be a text naming fields, such as 'new sale by {partner}'"
    if len(text) > MAX_TEMPLATE:
        return None, f"longer than {MAX_TEMPLATE} characters"
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        return None, f"not a template: {exc} (write {{{{ and }}}} for a brace)"
    parts = []
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append(Part(literal, None, ""))
            continue
        if not NAME.fullmatch(name):
            return None, f"{{{name}}}: a field is named plainly, as {{partner}} (no attribute, index or position)"
        if conversion is not None:
            return None, f"{{{name}!{conversion}}}: a conversion (!{conversion}) is not allowed"
        if spec and not SAFE_SPEC.fullmatch(spec):
            return None, (f"{{{name}:{spec}}}: not a format spec we take (such as ,.2f, .0f, d or >10; "
                          "no fill character, no nested field)")
        parts.append(Part(literal, name, spec or ""))
    return Template(text, tuple(parts)), None


def shown(name: str, value: Any, spec: str) -> str:
    """``value`` as the message shows it (``spec`` applied); None is shown as nothing."""
    if value is None:
        return ""
    if spec:
        try:
            return format(value, spec)
        except (TypeError, ValueError, OverflowError):
            raise ValueError(f"{{{name}:{spec}}}: its value ({type(value).__name__}) does not take this format") from None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
