"""How large a value an expression can build, and evaluating one within bounds.

JMESPath runs no code, but it can multiply what it is given: ``[@, @]`` doubles the delivery,
and nesting doubles again; a projection repeats its right side once per element; ``join``
repeats its separator. ``growth`` works out, from the parsed expression alone, how many times the
size of the delivery its result (and every value built on the way) can be at worst, so that the
checker refuses an expression that could build more than ``MAX_GROWTH`` times the delivery.
``search`` evaluates with a step budget and refuses a result larger than that bound, whatever
the input (a saved delivery given to ``preview``, an object a backfill read).

Sizes count the bytes of a value written as JSON (UTF-8); a delivery is at most 1 MiB (the
receiver's limit), and what is parsed from it, written again, is no larger.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from jmespath import functions
from jmespath.parser import ParsedResult
from jmespath.visitor import Options, TreeInterpreter

from sync.mapping.transforms import ValueProblem

#: The largest delivery the receiver accepts, in bytes (docs/webhooks.md: at most 1 MiB).
MAX_INPUT = 1024 * 1024
#: What an expression may build, at worst, as a multiple of the delivery it reads.
MAX_GROWTH = 32
#: The largest result an evaluation gives back (a larger one fails the field).
MAX_RESULT = MAX_GROWTH * MAX_INPUT
#: How many steps (nodes of the expression visited, once per element of a projection) one
#: evaluation may take.
MAX_STEPS = 2_000_000

#: A path element that stands for any key or index.
ANY = "*"
#: The element a projection's right side sees, before it is placed under its list.
_ELEMENT = ("#",)
#: Functions whose result is a number, a true/false or a type name.
_SMALL = {"abs", "avg", "ceil", "contains", "ends_with", "floor", "length", "starts_with", "sum", "to_number",
          "type"}
_SMALL_SIZE = 32
#: Functions whose result is at most their first argument: a part, an element or a reordering of it.
_AT_MOST_FIRST = {"keys", "values", "reverse", "sort", "max", "min", "to_array"}
#: How many times larger ``to_string`` makes a value at worst: it writes JSON in ASCII, so a
#: character takes at most 3 times its UTF-8 bytes (a 4-byte one becomes two \\uXXXX), and the
#: backslashes and quotes of that text are escaped again when it is written as a value.
_TO_STRING = 6


@dataclass(frozen=True)
class Size:
    """An upper bound on a value's size: ``parts`` says which parts of the input it holds, and how
    many times (a path of keys, ``*`` for any -> times), ``fixed`` what it adds (literals,
    brackets). ``view`` is set when the value is the input's part at that path itself."""

    parts: dict[tuple[str, ...], float] = field(default_factory=dict)
    fixed: float = 0
    view: tuple[str, ...] | None = None

    def times(self) -> float:
        """How many times one character of the input can appear in the value, at most."""
        paths = list(self.parts)
        return max((sum(self.parts[q] for q in paths if _overlap(p, q)) for p in paths), default=0)

    def worst(self, input_size: float) -> float:
        return self.times() * input_size + self.fixed


def _overlap(p: tuple[str, ...], q: tuple[str, ...]) -> bool:
    """Whether the input's parts at ``p`` and ``q`` can share a character (one holds the other)."""
    return all(a == b or ANY in (a, b) for a, b in zip(p, q))


def _sum(*sizes: Size) -> Size:
    parts: dict[tuple[str, ...], float] = {}
    for size in sizes:
        for path, times in size.parts.items():
            parts[path] = parts.get(path, 0) + times
    return Size(parts, sum(s.fixed for s in sizes))


def _either(*sizes: Size) -> Size:
    """One of ``sizes`` (``a || b``): at each part, the most any of them holds."""
    parts: dict[tuple[str, ...], float] = {}
    for size in sizes:
        for path, times in size.parts.items():
            parts[path] = max(parts.get(path, 0), times)
    views = {s.view for s in sizes}
    return Size(parts, max(s.fixed for s in sizes), views.pop() if len(views) == 1 else None)


def _scaled(size: Size, factor: float, plus: float = 0) -> Size:
    return Size({p: t * factor for p, t in size.parts.items()}, size.fixed * factor + plus)


def _part(size: Size, key: str) -> Size:
    """A part of ``size``'s value (a key, an element): the input's part below, else at most it."""
    if size.view is not None:
        path = (*size.view, key)
        return Size({path: 1}, 0, path)
    return Size(size.parts, size.fixed)


class _Growth:
    """Walks a parsed expression over symbolic sizes; ``peak`` is the largest value built."""

    def __init__(self) -> None:
        self.built: list[Size] = []

    def visit(self, node: dict, value: Size) -> Size:
        size = getattr(self, f"_{node['type']}", self._unknown)(node, value)
        self.built.append(size)
        return size

    def each(self, base: Size, node: dict) -> Size:
        """``node`` applied to every element of ``base``, all together: what the elements hold
        once, and what ``node`` adds (a literal…) and a comma once per element (a list has at most
        one element per two of its characters)."""
        outer, self.built = self.built, []
        one = self.visit(node, Size({_ELEMENT: 1}, 0, _ELEMENT))
        inner, self.built = self.built, outer
        for size in inner:  # what is built on the way, for every element
            self.built.append(self._all(base, size))
        return self._all(base, one)

    @staticmethod
    def _all(base: Size, one: Size) -> Size:
        if base.view is not None:
            under = (*base.view, ANY)
            parts = {(*under, *p[len(_ELEMENT):]) if p[:len(_ELEMENT)] == _ELEMENT else p: t
                     for p, t in one.parts.items()}
            parts[base.view] = parts.get(base.view, 0) + (one.fixed + 1) / 2
            return Size(parts, 2)
        return _scaled(base, one.times() + (one.fixed + 1) / 2, 2)

    def _unknown(self, node: dict, value: Size) -> Size:
        raise _Unbounded(f"{node['type']} is not known to be bounded")

    def _field(self, node: dict, value: Size) -> Size:
        return _part(value, node["value"])

    def _current(self, node: dict, value: Size) -> Size:
        return value

    _identity = _current

    def _literal(self, node: dict, value: Size) -> Size:
        return Size({}, len(json.dumps(node["value"], ensure_ascii=False, default=str).encode()))

    def _chain(self, node: dict, value: Size) -> Size:
        for child in node["children"]:
            value = self.visit(child, value)
        return value

    _subexpression = _index_expression = _pipe = _chain

    def _index(self, node: dict, value: Size) -> Size:
        return _part(value, ANY)

    def _slice(self, node: dict, value: Size) -> Size:
        return value  # some of the elements, in a list of their own

    def _flatten(self, node: dict, value: Size) -> Size:
        base = self.visit(node["children"][0], value)
        return Size(base.parts, base.fixed)

    def _multi_select_list(self, node: dict, value: Size) -> Size:
        children = [self.visit(child, value) for child in node["children"]]
        return _sum(*children, Size({}, len(children) + 2))

    def _multi_select_dict(self, node: dict, value: Size) -> Size:
        children = [self.visit(child, value) for child in node["children"]]
        keys = sum(len(child["value"].encode()) + 4 for child in node["children"])
        return _sum(*children, Size({}, keys + 2))

    def _key_val_pair(self, node: dict, value: Size) -> Size:
        return self.visit(node["children"][0], value)

    def _or_expression(self, node: dict, value: Size) -> Size:
        return _either(*(self.visit(child, value) for child in node["children"]))

    _and_expression = _or_expression

    def _not_expression(self, node: dict, value: Size) -> Size:
        self.visit(node["children"][0], value)
        return Size({}, 5)

    def _comparator(self, node: dict, value: Size) -> Size:
        for child in node["children"]:
            self.visit(child, value)
        return Size({}, 5)

    def _projection(self, node: dict, value: Size) -> Size:
        return self.each(self.visit(node["children"][0], value), node["children"][1])

    _value_projection = _projection

    def _filter_projection(self, node: dict, value: Size) -> Size:
        base = self.visit(node["children"][0], value)
        self.each(base, node["children"][2])
        return self.each(base, node["children"][1])

    def _expref(self, node: dict, value: Size) -> Size:
        raise _Unbounded("an expression reference (&…) outside a function that takes one")

    def _function_expression(self, node: dict, value: Size) -> Size:
        name = node["value"]
        children = node["children"]
        refs = [child["children"][0] for child in children if child["type"] == "expref"]
        args = [self.visit(child, value) for child in children if child["type"] != "expref"]
        if name in _SMALL:
            return Size({}, _SMALL_SIZE)
        if name in _AT_MOST_FIRST and args:
            return _sum(args[0], Size({}, 2))
        if name in ("sort_by", "max_by", "min_by") and args and refs:
            self.each(args[0], refs[0])  # the key of every element is built on the way
            return args[0]
        if name == "map" and args and refs:
            return self.each(args[0], refs[0])
        if name == "merge":
            return _sum(*args)
        if name == "not_null" and args:
            return _either(*args)
        if name == "to_string" and args:
            return _scaled(args[0], _TO_STRING, 2)
        if name == "join" and len(args) == 2:
            separator, items = args
            if separator.parts:  # repeated once per element: as large as the delivery, squared
                raise _Unbounded("join's separator is read from the delivery: it must be written in the expression")
            # The texts lose their quotes (two characters each) and gain a separator each.
            return _sum(items, _scaled(items, max(0, separator.fixed - 4) / 2))
        if name in _KNOWN:
            raise _Unbounded(f"{name}() is given {len(children)} argument{'s' if len(children) != 1 else ''}: "
                             "not what it takes")
        raise _Unbounded(f"unknown function {name}()")


class _Unbounded(Exception):
    """An expression whose result has no bound in the delivery's size (the message says why)."""


def growth(parsed: dict, input_size: int = MAX_INPUT) -> tuple[float, str | None]:
    """How many times the size of a delivery of ``input_size`` (the largest, by default) the
    expression's result, or any value built on the way, can be at worst; with why, when it has
    no bound (then inf)."""
    walker = _Growth()
    try:
        walker.visit(parsed, Size({(): 1}, 0, ()))
    except _Unbounded as exc:
        return math.inf, str(exc)
    return max(size.worst(input_size) for size in walker.built) / input_size, None


# -- evaluation --------------------------------------------------------------------------------


class _Budgeted(TreeInterpreter):
    """JMESPath's own interpreter, counting its steps."""

    def __init__(self) -> None:
        super().__init__(_OPTIONS)
        self.steps = 0

    def visit(self, node: dict, *args: Any, **kwargs: Any) -> Any:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise ValueProblem(f"the expression took more than {MAX_STEPS:,} steps: it is not worth this delivery")
        method = self._method_cache.get(node["type"])
        if method is None:  # as Visitor.visit finds it
            method = self._method_cache[node["type"]] = getattr(self, f"visit_{node['type']}", self.default_visit)
        return method(node, *args, **kwargs)


_FUNCTIONS = functions.Functions()
_OPTIONS = Options(custom_functions=_FUNCTIONS)
#: The functions JMESPath has.
_KNOWN = frozenset(_FUNCTIONS.FUNCTION_TABLE)


def search(expression: ParsedResult, document: Any) -> Any:
    """``expression`` over ``document``, within ``MAX_STEPS`` steps and a result of at most
    ``MAX_RESULT`` characters; raises ``ValueProblem`` past either."""
    result = _Budgeted().visit(expression.parsed, document)
    if result is not None and not isinstance(result, bool | int | float) and _larger_than(result, MAX_RESULT):
        raise ValueProblem(f"the expression built a value of more than {MAX_RESULT:,} characters")
    return result


def _larger_than(value: Any, limit: int) -> bool:
    """Whether ``value`` written as JSON is longer than ``limit`` characters (roughly: a text
    counts its characters and quotes, a number 24, shared parts as often as they are written
    out); stops as soon as it is, without listing a large list or object first."""
    total = 0
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        if isinstance(item, str):
            total += len(item) + 3
        elif isinstance(item, dict):
            total += 2
            stack.append(chain.from_iterable(item.items()))  # keys count as texts
        elif isinstance(item, list):
            total += 2
            stack.append(iter(item))
        else:
            total += 24
        if total > limit:
            return True
    return False


_END = object()
