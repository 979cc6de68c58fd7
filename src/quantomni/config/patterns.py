"""Layer-name patterns used by ``ignored_layers`` and adapters.

A pattern is either an fnmatch glob (``"*.proj_out"``, ``"transformer_blocks.0.*"``) or a
regular expression prefixed with ``re:`` (``"re:.*\\.to_(q|k|v)$"``). Globs must match the whole
module name; regexes use :func:`re.fullmatch`. Patterns are compiled once, validated at config
construction so a bad regex fails early with the field name.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

REGEX_PREFIX = "re:"


@dataclass(frozen=True)
class LayerPattern:
    """One compiled pattern; ``text`` is what the user wrote."""

    text: str
    _regex: re.Pattern

    @classmethod
    def parse(cls, text: str, field: str = "ignored_layers") -> "LayerPattern":
        if not isinstance(text, str) or not text:
            raise ValueError(f"{field}: every pattern must be a non-empty string, got {text!r}")
        if text.startswith(REGEX_PREFIX):
            body = text[len(REGEX_PREFIX):]
            try:
                rx = re.compile(body)
            except re.error as exc:
                raise ValueError(f"{field}: invalid regular expression {body!r} in {text!r}: {exc}") from exc
        else:
            rx = re.compile(fnmatch.translate(text))
        return cls(text, rx)

    def matches(self, name: str) -> bool:
        return self._regex.fullmatch(name) is not None


def compile_patterns(patterns, field: str = "ignored_layers") -> tuple[LayerPattern, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, (list, tuple)):
        raise ValueError(f"{field}: expected a list of patterns, got {type(patterns).__name__}")
    return tuple(LayerPattern.parse(p, field) for p in patterns)


def first_match(patterns: tuple[LayerPattern, ...], name: str) -> LayerPattern | None:
    for p in patterns:
        if p.matches(name):
            return p
    return None
