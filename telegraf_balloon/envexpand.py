"""Telegraf's `${...}` environment expansion, as the plugin applies it to config strings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Optional

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_OPERATORS = (":-", "-", ":?", "?")


class EnvError(ValueError):
    """A `${...}` that cannot be expanded: unset without a default, or not an expression."""


_LITERAL_HINT = "write $${ for a literal ${"


def expand_env(text: str, environ: Mapping[str, str]) -> str:
    """Expand environment references as Telegraf does (its shell-like expansion), in strings.

    `${NAME}`; `${NAME:-default}` (unset or empty) and `${NAME-default}` (unset only);
    `${NAME:?message}` and `${NAME?message}` (an error with the message). A default or a
    message may hold references itself (`${A:-${B:-x}}`), expanded only when used. `$${` is a
    literal `${` (in a run of `$` before `{`, each `$$` is one `$`); any other `$` is literal.
    EnvError for an unset variable without a default, and for any other `${`: nothing is
    silently left as written. The message names no value (a password may hold the text).
    """
    value, _ = _expand(text, 0, environ, opener=None, use=True)
    return value


def _expand(
    text: str, at: int, environ: Mapping[str, str], opener: Optional[int], use: bool
) -> tuple[str, int]:
    """Expand text[at:]; in a default (the `${` at `opener`), up to the `}` that closes it
    (its index). `use`: the value counts (an unset variable in it is an error)."""
    nested = opener is not None
    out: list[str] = []
    i = at
    while i < len(text):
        char = text[i]
        if char == "$":
            j = i
            while j < len(text) and text[j] == "$":
                j += 1
            if j == len(text) or text[j] != "{":
                out.append(text[i:j])  # dollars before anything but `{` are literal
                i = j
                continue
            run = j - i
            out.append("$" * (run // 2))
            if run % 2 == 0:  # `$${`: a literal `${`
                out.append("{")
                i = j + 1
                continue
            value, i = _reference(text, j - 1, environ, use)
            out.append(value)
        elif char == "}" and nested:
            return "".join(out), i
        else:
            out.append(char)
            i += 1
    if opener is not None:
        raise EnvError(f"the ${{ at character {opener + 1} is not closed by }} ({_LITERAL_HINT})")
    return "".join(out), i


def _reference(text: str, at: int, environ: Mapping[str, str], use: bool) -> tuple[str, int]:
    """The `${...}` starting at text[at]: its value and the index after its `}`."""
    where = f"the ${{ at character {at + 1}"
    name_match = _ENV_NAME.match(text, at + 2)
    if name_match is None:
        raise EnvError(f"{where} has no variable name ({_LITERAL_HINT})")
    name = name_match.group()
    i = name_match.end()
    value = environ.get(name)
    if i == len(text):
        raise EnvError(f"{where} is not closed by }} ({_LITERAL_HINT})")
    if text[i] == "}":
        if value is None and use:
            raise EnvError(f"environment variable {name} is not set and has no default")
        return value or "", i + 1
    operator = next((op for op in _ENV_OPERATORS if text.startswith(op, i)), None)
    if operator is None:
        raise EnvError(
            f"{where}: expected }}, :-, -, :? or ? after {name} "
            f"(no other expansion is supported; {_LITERAL_HINT})"
        )
    missing = value is None or (operator.startswith(":") and value == "")
    inner, end = _expand(text, i + len(operator), environ, opener=at, use=use and missing)
    if not missing:
        assert value is not None
        return value, end + 1
    if operator.endswith("?"):
        if use:
            state = "is not set" if value is None else "is empty"
            raise EnvError(f"environment variable {name} {state}" + (f": {inner}" if inner else ""))
        return "", end + 1
    return inner, end + 1
