"""YAML payloads, bounded: what :func:`bootstrap.model.payload.decode` tries when a payload
is not JSON. Its own module so that a process that only ever reads JSON (an agent fed by
``csboot rollout``) never loads the parser."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import yaml

from bootstrap.errors import InvalidDocument, TooLarge
from bootstrap.model.payload import MAX_DEPTH, bounded_int

_INT = re.compile(r"[-+]?(?:0|[1-9][0-9_]*)")


class _Loader(yaml.SafeLoader):
    """SafeLoader with duplicate keys refused and integers bounded before ``int()``."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise InvalidDocument(f"duplicate key {key!r}", field=str(key))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = str(node.value)
        if not _INT.fullmatch(value.strip()):
            raise InvalidDocument(f"{value[:40]!r}: only decimal integers", field="")
        return bounded_int(value.strip())


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_PLAIN_TAGS = {
    None,
    "!",
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


def _yaml_events(text: str) -> Iterator[yaml.Event]:
    return yaml.parse(text, Loader=yaml.SafeLoader)


def _check_yaml_shape(text: str) -> None:
    """Depth, aliases and tags from the event stream, before any tree is composed."""
    depth = 0
    documents = 0
    for event in _yaml_events(text):
        if isinstance(event, yaml.AliasEvent):
            raise InvalidDocument("YAML aliases are not allowed", field="")
        if isinstance(event, yaml.DocumentStartEvent):
            documents += 1
            if documents > 1:
                raise InvalidDocument("one YAML document per payload", field="")
        tag = getattr(event, "tag", None)
        if tag not in _PLAIN_TAGS:
            raise InvalidDocument(f"YAML tag {str(tag)[:40]!r} is not allowed", field="")
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise TooLarge(f"nested deeper than {MAX_DEPTH}", field="")
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def decode(text: str) -> Any:
    """YAML within the bounds of :mod:`bootstrap.model.payload`; :class:`InvalidDocument`
    otherwise."""
    try:
        _check_yaml_shape(text)
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InvalidDocument(f"neither JSON nor YAML: {exc}", field="") from exc
