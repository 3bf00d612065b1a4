"""YAML with line numbers: every mapping remembers where each of its keys was written.

A mapping file is read within limits (size, nesting, what its aliases expand to), so that no file
can make the checker, or what runs the mappings later, use unbounded memory or time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sync.mapping.transforms import kind

#: The largest mapping file read (the shipped ones are about 2 KiB).
MAX_FILE_BYTES = 256 * 1024
#: How deeply mappings and lists may nest, counting what aliases (*name) bring in.
MAX_DEPTH = 20
#: How large a file may be once every alias is replaced by what it refers to: a node counts 1,
#: a text its characters. Aliases may reuse a part; they may not multiply it ("billion laughs").
MAX_EXPANDED = 1_000_000


class LineDict(dict):
    """A YAML mapping that knows its own line, each key's line, and keys written twice."""

    line: int = 0

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lines: dict[Any, int] = {}
        self.duplicates: list[tuple[Any, int]] = []

    def line_of(self, key: Any) -> int:
        return self.lines.get(key, self.line)


class YamlProblem(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with nesting bounded while composing (its composer recurses)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlProblem(_line(self.peek_event()), f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (YamlProblem, yaml.YAMLError):
            raise
        except (ValueError, OverflowError, TypeError) as exc:  # a date or a number out of range, say
            raise YamlProblem(_line(node), f"a value YAML cannot read ({type(exc).__name__})") from exc


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> LineDict:
    loader.flatten_mapping(node)
    result = LineDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == "on" and key_node.style is None:
            key = "on"  # YAML 1.1 reads a plain on as true; as a key it is a name (a notify entry's)
        if not isinstance(key, str):
            written = f" {key_node.value!r}" if isinstance(key_node, yaml.ScalarNode) and len(key_node.value) <= 40 else ""
            raise YamlProblem(line, f"key{written} is not text (YAML reads it as {kind(key)}): put it in quotes")
        if key in result:
            result.duplicates.append((key, line))
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    """Parse ``path``; raises ``YamlProblem`` with the line of a syntax error or of a limit passed."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise YamlProblem(0, f"cannot be read: {exc.strerror or type(exc).__name__}") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise YamlProblem(0, f"larger than {MAX_FILE_BYTES // 1024} KiB: not a mapping file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlProblem(1, f"not UTF-8 text: {exc.reason}") from exc
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, 1, {}, set())
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise YamlProblem(line, f"not valid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise YamlProblem(1, f"not valid YAML: {exc}") from exc
    except RecursionError as exc:  # not expected within MAX_DEPTH; never a traceback all the same
        raise YamlProblem(1, "nested too deeply") from exc
    finally:
        loader.dispose()


def _measure(node: yaml.Node, depth: int, sizes: dict[int, tuple[int, int]], open_: set[int]) -> tuple[int, int]:
    """``node``'s size and height with every alias expanded; raises ``YamlProblem`` past a limit.

    Each distinct node is measured once (aliases share nodes), so this is quick whatever the
    aliases would expand to.
    """
    if depth > MAX_DEPTH:
        raise YamlProblem(_line(node), f"nested more than {MAX_DEPTH} levels deep (counting what aliases bring in)")
    key = id(node)
    if key in sizes:  # its parent has checked that it fits here
        return sizes[key]
    if key in open_:
        raise YamlProblem(_line(node), "an alias refers to a node that contains it")
    open_.add(key)
    if isinstance(node, yaml.ScalarNode):
        size, height = 1 + len(node.value), 0
    else:
        children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        size, height = 1, 0
        for child in children:
            known = sizes.get(id(child))  # measured before: an alias brings it in here
            if known is not None and depth + 1 + known[1] > MAX_DEPTH:
                raise YamlProblem(_line(node), f"nested more than {MAX_DEPTH} levels deep (counting what aliases "
                                               "bring in)")
            child_size, child_height = _measure(child, depth + 1, sizes, open_)
            size += child_size
            height = max(height, child_height + 1)
            if size > MAX_EXPANDED:
                raise YamlProblem(_line(node), f"expands to more than {MAX_EXPANDED:,} characters once its aliases "
                                               "(*name) are replaced by what they refer to")
    open_.discard(key)
    sizes[key] = (size, height)
    return size, height


def _line(mark_holder: Any) -> int:
    mark = getattr(mark_holder, "start_mark", None)
    return mark.line + 1 if mark is not None else 1
