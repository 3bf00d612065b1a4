"""The named transforms a mapping field may apply, and the column types values end up as."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sync.core.envelope import ExactFloat, parse_timestamp

#: Column types a field may declare.
TYPES = ("string", "text", "integer", "decimal", "boolean", "datetime", "json")
ANY = "any"

_TRUE = {"true", "yes", "y", "1", "on", "t"}
_FALSE = {"false", "no", "n", "0", "off", "f", ""}


class ValueProblem(ValueError):
    """A value the field cannot take; the message says what and why."""


#: What no database stores in a text: NUL, and halves of UTF-16 pairs (JSON's "\ud800").
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, ExactFloat):
        return value.text
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


#: The longest text or JSON one field stores (a delivery's whole body is at most 1 MiB; an
#: expression that makes more out of it is refused for that field).
MAX_VALUE_CHARS = 1024 * 1024


def to_string(value: Any) -> str | None:
    """A value as text: numbers with the digits they were sent with, lists and objects as JSON."""
    text = _text(value)
    if text is None:
        return None
    if len(text) > MAX_VALUE_CHARS:
        raise ValueProblem(f"{kind(value)} longer than {MAX_VALUE_CHARS:,} characters is too long to store")
    if _UNSTORABLE.search(text):
        raise ValueProblem(f"{kind(value)} holding a NUL character or broken Unicode (a lone surrogate) cannot be stored")
    return text


#: A number written as text: optional sign, ASCII digits, an optional fraction and exponent,
#: optionally surrounded by blanks. Nothing else Python would read as a number (1_000, ٣, ½,
#: "Infinity") is taken for one.
_PLAIN_NUMBER = re.compile(r"[ \t\r\n]*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[ \t\r\n]*")


def to_decimal(value: Any) -> Decimal | None:
    """A number, exactly: a JSON number, or text in plain decimal notation (12.50, -3, 1e3)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueProblem("true/false is not a number")
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, ExactFloat):
        result = _decimal(value.text)
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, float):  # a constant in a mapping file
        result = _decimal(repr(value))
    elif isinstance(value, str):
        found = _PLAIN_NUMBER.fullmatch(value)
        if found is None:
            raise ValueProblem(f"{kind(value)} is not a number")  # only plain digits are one (12.50, -3, 1e3)
        result = _decimal(found.group(1))
    else:
        raise ValueProblem(f"{kind(value)} is not a number")
    if not result.is_finite():
        raise ValueProblem(f"{kind(value)} is not a finite number")
    return result


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # an exponent beyond what Decimal holds
        raise ValueProblem("a number far too large or too small to store") from exc


#: Money and other decimals are stored as NUMERIC(18, 6): 12 digits before the point, 6 after.
DECIMAL_PLACES = 6
DECIMAL_DIGITS = 18
_DECIMAL_LIMIT = Decimal(10) ** (DECIMAL_DIGITS - DECIMAL_PLACES)
_DECIMAL_STEP = Decimal(1).scaleb(-DECIMAL_PLACES)
#: The "integer" type is stored as BIGINT: 64 bits, signed.
INTEGER_MIN, INTEGER_MAX = -(2**63), 2**63 - 1


def to_decimal_column(value: Any) -> Decimal | None:
    """A decimal that fits NUMERIC(18, 6) exactly; anything else is refused, never rounded."""
    number = to_decimal(value)
    if number is None:
        return None
    # The size first: quantizing a number of more digits than Decimal's precision would raise.
    if number.copy_abs() >= _DECIMAL_LIMIT:
        raise ValueProblem(f"a number of more than {DECIMAL_DIGITS - DECIMAL_PLACES} digits before the point "
                           f"does not fit NUMERIC({DECIMAL_DIGITS}, {DECIMAL_PLACES})")
    if number.as_tuple().exponent < -DECIMAL_PLACES and number != number.quantize(_DECIMAL_STEP):
        raise ValueProblem(f"a number with more than {DECIMAL_PLACES} decimal places does not fit "
                           f"NUMERIC({DECIMAL_DIGITS}, {DECIMAL_PLACES})")
    return number


def to_integer(value: Any) -> int | None:
    number = to_decimal(value)
    if number is None:
        return None
    if not INTEGER_MIN <= number <= INTEGER_MAX:
        raise ValueProblem("a whole number beyond ±9,223,372,036,854,775,807 does not fit a 64-bit integer column")
    if number != number.to_integral_value():
        raise ValueProblem("a number with a fraction is not a whole number")
    return int(number)


def to_boolean(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float, Decimal)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueProblem(f"{kind(value)} is not true or false")


def to_datetime(value: Any) -> datetime | None:
    """A time in UTC; a value that is not a readable time is stored as unknown (None) rather
    than failing the delivery: a time is not worth losing the rest of a delivery for, and the
    record's version falls back to the delivery's own time (``evaluate.version_time``)."""
    if value is None or value == "":
        return None
    return parse_timestamp(value)


def to_json(value: Any) -> Any:
    """The value as it is, when JSON can hold it: no infinite number, no broken Unicode."""
    if isinstance(value, (dict, list, str, float)):
        try:
            text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
        except (ValueError, RecursionError) as exc:
            what = "a number" if isinstance(value, float) else f"{kind(value)} holding a number"
            raise ValueProblem(f"{what} too large for JSON cannot be stored") from exc
        if len(text) > MAX_VALUE_CHARS:
            raise ValueProblem(f"{kind(value)} longer than {MAX_VALUE_CHARS:,} characters as JSON is too long to store")
        if _UNSTORABLE.search(text):  # json.dumps escapes NUL: only raw surrogates are left
            raise ValueProblem(f"{kind(value)} holding broken Unicode (a lone surrogate) cannot be stored")
    return value


COERCE: dict[str, Callable[[Any], Any]] = {
    "string": to_string,
    "text": to_string,
    "integer": to_integer,
    "decimal": to_decimal_column,
    "boolean": to_boolean,
    "datetime": to_datetime,
    "json": to_json,
}


#: The longest record id: the key columns (warehouse, inbox, ledger, outbox) are VARCHAR(255).
MAX_ENTITY_ID = 255
#: What a record id may not contain: control characters, and halves of UTF-16 pairs (no
#: database can store those).
_UNSTORABLE_ID = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def id_problem(value: Any, what: str) -> str | None:
    """Why ``value`` (not None) is not the text of an id (``what``: "a record id", "a partner
    id"…), as the end of a sentence naming the field; None when it is one: a text that is not
    blank, of at most 255 characters, without control characters, or a whole number. Never
    quotes the value."""
    if isinstance(value, str) and not value.strip():
        return f"is an empty text: {what} is a text or a whole number"
    if isinstance(value, float):
        return f"is a number with a decimal point: {what} is a text or a whole number"
    if isinstance(value, bool) or not isinstance(value, str | int):
        return f"is {kind(value)}: {what} is a text or a whole number"
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_ENTITY_ID:
        return f"is longer than {MAX_ENTITY_ID} characters: too long for {what}"
    if _UNSTORABLE_ID.search(text):
        return f"holds control characters or broken Unicode: not {what}"
    return None


def kind(value: Any) -> str:
    """What sort of value ``value`` is, for error messages: they never quote a delivery's values."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "an empty text" if not value.strip() else "a text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class Transform:
    """One step of a field: a name, its argument, the type it produces, and what it does."""

    name: str
    argument: Any
    produces: str  # a type from TYPES, or ANY when it keeps or depends on the input
    apply: Callable[[Any], Any]


def _string_op(op: Callable[[str], str]) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        text = to_string(value)
        return None if text is None else op(text)

    return run


def _default(argument: Any) -> Callable[[Any], Any]:
    return lambda value: argument if value is None or value == "" else value


def _map(argument: dict) -> Callable[[Any], Any]:
    table = {_text(k): v for k, v in argument.items()}

    def run(value: Any) -> Any:
        key = to_string(value)
        return table[key] if key in table else value

    return run


def _join(argument: str) -> Callable[[Any], Any]:
    def run(value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list):
            return to_string(value)
        return argument.join(to_string(v) for v in value if v is not None)

    return run


#: name -> (needs an argument, the type it produces, how to build the function from its argument)
BUILDERS: dict[str, tuple[bool, str, Callable[[Any], Callable[[Any], Any]]]] = {
    "lower": (False, "string", lambda _: _string_op(str.lower)),
    "upper": (False, "string", lambda _: _string_op(str.upper)),
    "strip": (False, "string", lambda _: _string_op(str.strip)),
    "string": (False, "string", lambda _: to_string),
    "decimal": (False, "decimal", lambda _: to_decimal),
    "integer": (False, "integer", lambda _: to_integer),
    "datetime": (False, "datetime", lambda _: to_datetime),
    "bool": (False, "boolean", lambda _: to_boolean),
    "default": (True, ANY, _default),
    "map": (True, ANY, _map),
    "join": (True, "string", _join),
    "constant": (True, ANY, lambda argument: (lambda _value: argument)),
}


def literal_type(value: Any) -> str:
    """The column type a literal from a mapping file (constant, default, map value) would need."""
    if value is None:
        return ANY
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "decimal"
    if isinstance(value, (dict, list)):
        return "json"
    if isinstance(value, datetime):
        return "datetime"
    return "string"


def compatible(produced: str, declared: str) -> bool:
    """Whether a value of type ``produced`` can be stored in a column of type ``declared``."""
    if produced == ANY or produced == declared or declared == "json":
        return True
    if declared in ("string", "text"):
        return True  # anything has a text form
    return declared == "decimal" and produced == "integer"
