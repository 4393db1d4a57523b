"""Calico's label selector language: a parser, an evaluator and a canonical printer.

Stage: helper of the pure calculation. BGPPeer ``nodeSelector`` / ``peerSelector`` (and IPPool
``nodeSelector``) are parsed here when the model is built, so a bad selector is a validation error of
its resource, and evaluated against Node labels when peerings are expanded.

Owns: the grammar, the syntax tree and the error messages. Nothing else.

Grammar (Calico's, ``libcalico-go/lib/selector``)::

    selector   := <empty> | or
    or         := and ( "||" and )*
    and        := unary ( "&&" unary )*
    unary      := "!" unary | primary
    primary    := "(" or ")" | "all()" | "has(" label ")" | label op
    op         := "==" str | "!=" str | "in" set | "not in" set
                | "contains" str | "starts with" str | "ends with" str
    set        := "{" [ str ( "," str )* ] "}"
    str        := '"' chars '"' | "'" chars "'"     (no escapes)

Complicating factors:
- Semantics of absence: ``k == "v"`` and ``k in {...}`` need the label; ``k != "v"`` and
  ``k not in {...}`` are *true* when it is absent (Calico's rules, so ``!has(k)`` nodes match them).
- ``!`` binds tighter than ``&&``, which binds tighter than ``||``; ``!a == "b"`` negates the comparison.
- ``has``, ``all``, ``not``, ``in``, ... are only keywords where the grammar expects them, so a label
  called ``in`` still works on the left of an operator.
- Selectors come from a shared datastore: errors quote the selector cut short and say at which
  character parsing stopped, and nothing is ever ``eval``-ed.
- An empty selector means ``all()``, as in Calico.
- Length and nesting are bounded (4096 characters, 64 levels of ``!`` and parentheses): the parser,
  evaluator and printer recurse per level, and a selector of 4,000 ``!`` must be a validation error of
  its resource, not a ``RecursionError`` that takes the whole snapshot down.

>>> s = parse("rack == 'r1' && !has(route-reflector)")
>>> s.matches({"rack": "r1"}), s.matches({"rack": "r1", "route-reflector": ""}), str(s)
(True, False, 'rack == "r1" && !has(route-reflector)')
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import NoReturn

MAX_SELECTOR_LENGTH = 4096
MAX_NESTING = 64
_LABEL_RE = re.compile(r"[A-Za-z0-9_./-]{1,512}")
_SPACE_RE = re.compile(r"\s*")
_TOKEN_RE = re.compile(r"\|\||&&|==|!=|[!(){},]|\"[^\"]*\"|'[^']*'|[A-Za-z0-9_./-]+")

Labels = Mapping[str, str]


class SelectorError(ValueError):
    """A selector that does not parse; ``position`` is the 0-based character where parsing failed."""

    def __init__(self, selector: str, position: int, problem: str) -> None:
        self.selector, self.position, self.problem = selector, position, problem
        shown = selector if len(selector) <= 60 else selector[:57] + "..."
        super().__init__(f"{problem} at character {position} of {shown!r}")


def _quote(value: str) -> str:
    return f"'{value}'" if '"' in value else f'"{value}"'


class Selector:
    """A parsed selector. ``str()`` gives a canonical form that parses back to an equal tree."""

    def matches(self, labels: Labels) -> bool:
        raise NotImplementedError


@dataclass(frozen=True)
class All(Selector):
    def matches(self, labels: Labels) -> bool:
        return True

    def __str__(self) -> str:
        return "all()"


@dataclass(frozen=True)
class Has(Selector):
    key: str

    def matches(self, labels: Labels) -> bool:
        return self.key in labels

    def __str__(self) -> str:
        return f"has({self.key})"


@dataclass(frozen=True)
class Compare(Selector):
    """``key <op> value`` for the string operators."""

    key: str
    op: str  # "==" | "!=" | "contains" | "starts with" | "ends with"
    value: str

    def matches(self, labels: Labels) -> bool:
        actual = labels.get(self.key)
        if self.op == "!=":
            return actual != self.value
        if actual is None:
            return False
        if self.op == "==":
            return actual == self.value
        if self.op == "contains":
            return self.value in actual
        if self.op == "starts with":
            return actual.startswith(self.value)
        return actual.endswith(self.value)

    def __str__(self) -> str:
        return f"{self.key} {self.op} {_quote(self.value)}"


@dataclass(frozen=True)
class In(Selector):
    key: str
    values: frozenset[str]
    negated: bool = False  # "not in"

    def matches(self, labels: Labels) -> bool:
        actual = labels.get(self.key)
        inside = actual is not None and actual in self.values
        return not inside if self.negated else inside

    def __str__(self) -> str:
        items = ", ".join(_quote(v) for v in sorted(self.values))
        return f"{self.key} {'not in' if self.negated else 'in'} {{{items}}}"


@dataclass(frozen=True)
class Not(Selector):
    operand: Selector

    def matches(self, labels: Labels) -> bool:
        return not self.operand.matches(labels)

    def __str__(self) -> str:
        inner = str(self.operand)
        return f"!{inner}" if isinstance(self.operand, (All, Has, Not)) else f"!({inner})"


@dataclass(frozen=True)
class And(Selector):
    operands: tuple[Selector, ...]

    def matches(self, labels: Labels) -> bool:
        return all(o.matches(labels) for o in self.operands)

    def __str__(self) -> str:
        # Nested groups keep their parentheses, so the printed form parses back to the same tree.
        return " && ".join(f"({o})" if isinstance(o, (Or, And)) else str(o) for o in self.operands)


@dataclass(frozen=True)
class Or(Selector):
    operands: tuple[Selector, ...]

    def matches(self, labels: Labels) -> bool:
        return any(o.matches(labels) for o in self.operands)

    def __str__(self) -> str:
        return " || ".join(f"({o})" if isinstance(o, Or) else str(o) for o in self.operands)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, int]] = []
        pos = 0
        while True:
            # `\s*` matches at every position, so there is always a match object.
            pos = _SPACE_RE.match(text, pos).end()  # type: ignore[union-attr]
            if pos >= len(text):
                break
            match = _TOKEN_RE.match(text, pos)
            if match is None:
                if text[pos] in "\"'":
                    self.fail(pos, "unterminated string")
                self.fail(pos, f"unexpected character {text[pos]!r}")
            self.tokens.append((match.group(), pos))
            pos = match.end()
        self.index = 0
        self.depth = 0

    @contextlib.contextmanager
    def nested(self) -> Iterator[None]:
        # The parser, the evaluator and the printer all recurse once per level: bounding the levels here
        # bounds all three far below Python's recursion limit.
        if self.depth >= MAX_NESTING:
            self.fail(self.position(), f"nested deeper than {MAX_NESTING} levels of '!' and '('")
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def fail(self, position: int, problem: str) -> NoReturn:
        raise SelectorError(self.text, position, problem)

    def peek(self, offset: int = 0) -> str:
        i = self.index + offset
        return self.tokens[i][0] if i < len(self.tokens) else ""

    def position(self) -> int:
        return self.tokens[self.index][1] if self.index < len(self.tokens) else len(self.text)

    def take(self, expected: str | None = None, what: str = "") -> str:
        token = self.peek()
        if not token or (expected is not None and token != expected):
            found = f"{token!r}" if token else "the end"
            self.fail(self.position(), f"expected {what or repr(expected)}, found {found}")
        self.index += 1
        return token

    def parse(self) -> Selector:
        if not self.tokens:
            return All()
        tree = self.or_expr()
        if self.index < len(self.tokens):
            self.fail(self.position(), f"unexpected {self.peek()!r}")
        return tree

    def or_expr(self) -> Selector:
        operands = [self.and_expr()]
        while self.peek() == "||":
            self.index += 1
            operands.append(self.and_expr())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_expr(self) -> Selector:
        operands = [self.unary()]
        while self.peek() == "&&":
            self.index += 1
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def unary(self) -> Selector:
        if self.peek() == "!":
            self.index += 1
            with self.nested():
                return Not(self.unary())
        return self.primary()

    def primary(self) -> Selector:
        token = self.peek()
        if token == "(":
            self.index += 1
            with self.nested():
                inner = self.or_expr()
            self.take(")", "')'")
            return inner
        if token in ("all", "has") and self.peek(1) == "(":
            self.index += 2
            if token == "all":
                self.take(")", "')' after 'all('")
                return All()
            key = self.label()
            self.take(")", "')' after the label")
            return Has(key)
        key = self.label()
        return self.operator(key)

    def label(self) -> str:
        position = self.position()
        token = self.take(what="a label")
        if not _LABEL_RE.fullmatch(token):
            self.fail(position, f"expected a label, found {token!r}")
        return token

    def string(self) -> str:
        position = self.position()
        token = self.take(what="a quoted string")
        if len(token) < 2 or token[0] not in "\"'" or token[-1] != token[0]:
            self.fail(position, f"expected a quoted string, found {token!r}")
        return token[1:-1]

    def operator(self, key: str) -> Selector:
        token = self.peek()
        if token in ("==", "!=", "contains"):
            self.index += 1
            return Compare(key, token, self.string())
        if token in ("starts", "ends") and self.peek(1) == "with":
            self.index += 2
            return Compare(key, f"{token} with", self.string())
        if token == "in":
            self.index += 1
            return In(key, self.value_set())
        if token == "not" and self.peek(1) == "in":
            self.index += 2
            return In(key, self.value_set(), negated=True)
        found = f"{token!r}" if token else "the end"
        self.fail(
            self.position(), f"expected an operator (==, !=, in, not in, ...) after {key!r}, found {found}"
        )
        raise AssertionError  # unreachable: fail() raises

    def value_set(self) -> frozenset[str]:
        self.take("{", "'{'")
        values: list[str] = []
        if self.peek() == "}":
            self.index += 1
            return frozenset()
        while True:
            values.append(self.string())
            if self.peek() == ",":
                self.index += 1
                continue
            self.take("}", "',' or '}'")
            return frozenset(values)


def parse(text: str) -> Selector:
    """Parse a selector; raises ``SelectorError`` with the position of the first problem."""
    if not isinstance(text, str):
        raise SelectorError(repr(text), 0, "a selector must be a string")
    if len(text) > MAX_SELECTOR_LENGTH:
        raise SelectorError(text, MAX_SELECTOR_LENGTH, f"longer than {MAX_SELECTOR_LENGTH} characters")
    return _Parser(text).parse()
