#!/usr/bin/env python3
"""A brute-force reference for `freshet historical`, written straight from the feature semantics.

It exists so that the C++ engine can be checked against an independent computation (see
historical_diff_test.py). It is deliberately naive: for every entity row and every feature it scans all
of that entity's events, keeps the ones that qualify, picks the window, and aggregates the window from
scratch. Nothing is incremental, nothing is shared between rows, and exact arithmetic (Fraction) is used
wherever floating-point order could matter. Clarity over speed.

Usage, writing the same CSV as the engine:

    python tests/reference.py --spec SPEC --events EVENTS.jsonl --entities ROWS.csv --output OUT.csv \
        [--dead-letters DEAD.jsonl]

Differences from the engine: approx_count_distinct is written as the exact distinct count, since that is
what the engine's HyperLogLog estimate is judged against (exact up to 2**p / 32 distinct values, otherwise
within a relative error of 4 * 1.04 / sqrt(2**p); see `approx_count_distinct_ok`). approx_percentile is
written as the exact nearest-rank percentile; the engine's sketch is exact up to 256 values and otherwise
judged by the rank bound in `approx_percentile_ok`.

Standard library plus PyYAML only; it never calls Freshet's C++ code.
"""

from __future__ import annotations

import argparse
import bisect
import calendar
import csv
import datetime
import json
import math
import re
import sys
import urllib.parse
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

import yaml

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Event times must lie in years 0001..9999 (UTC): 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z.
MIN_TIME_MS = -62135596800000
MAX_TIME_MS = 253402300799999

AGGREGATIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "stddev",
    "last",
    "count_distinct",
    "approx_count_distinct",
    "first",
    "approx_percentile",
)
NUMERIC_AGGREGATIONS = ("sum", "mean", "min", "max", "stddev", "approx_percentile")
# approx_percentile: the sketch keeps every value up to this many, then compacts (QUANTILE_LEVEL_CAPACITY in
# the rank bound of approx_percentile_ok).
QUANTILE_LEVEL_CAPACITY = 256
# top_k and last_k: values that are lists (JSON text in CSV and Redis, Parquet lists offline); see the list aggregations section.
LIST_AGGREGATIONS = ("top_k", "last_k")
WINDOW_TYPES = ("lifetime", "sliding", "tumbling", "session")


class ReferenceError(Exception):
    """A problem with the inputs that stops the whole run (bad spec, bad entities CSV)."""


class _Missing:
    """The value of a field that is absent from an event (distinct from a JSON null, which is None)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()


# ---------------------------------------------------------------------------------------------------
# Durations and timestamps
# ---------------------------------------------------------------------------------------------------

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"([0-9]+)(ms|s|m|h|d)")


def parse_duration_ms(text: Any) -> int:
    """'30s' -> 30000. A positive integer followed by one of ms, s, m, h, d."""
    match = _DURATION_RE.fullmatch(str(text))
    if match is None or int(match.group(1)) <= 0:
        raise ReferenceError(f"invalid duration {text!r}: write a positive integer and a unit ms|s|m|h|d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


_RFC3339_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"  # date
    r"[Tt ]"
    r"([0-9]{2}):([0-9]{2}):([0-9]{2})"  # time of day
    r"(?:\.([0-9]+))?"  # optional fraction, any number of digits
    r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))"  # Z or +hh:mm / -hh:mm
)
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


def parse_rfc3339_ms(text: str) -> int | None:
    """Epoch milliseconds of an RFC 3339 timestamp with an offset or Z, or None when it is not one.

    The fraction is cut to its first three digits (never rounded); seconds=60 reads as 59.
    """
    match = _RFC3339_RE.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(match.group(k)) for k in range(1, 7))
    fraction, zulu, sign, offset_hours, offset_minutes = match.group(7, 8, 9, 10, 11)
    if year < 1 or not 1 <= month <= 12:
        return None
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    if hour > 23 or minute > 59 or second > 60:
        return None
    if second == 60:
        second = 59
    millis = int((fraction or "")[:3].ljust(3, "0"))
    offset = 0
    if zulu is None:
        if int(offset_hours) > 23 or int(offset_minutes) > 59:
            return None
        offset = int(offset_hours) * 60 + int(offset_minutes)
        if sign == "-":
            offset = -offset
    days = datetime.date(year, month, day).toordinal() - _EPOCH_ORDINAL
    ms = ((days * 24 + hour) * 60 + minute - offset) * 60_000 + second * 1000 + millis
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        return None
    return ms


def event_time_ms(value: Any) -> int | None:
    """The event time of a timestamp field value: a JSON integer (epoch ms) or an RFC 3339 string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # Integers beyond int64 were already turned into floats by the JSON reader.
        return value if MIN_TIME_MS <= value <= MAX_TIME_MS else None
    if isinstance(value, str):
        return parse_rfc3339_ms(value)
    return None


def row_time_ms(cell: str) -> int | None:
    """The time of an entity row: an integer (epoch ms) or an RFC 3339 timestamp."""
    if re.fullmatch(r"-?[0-9]+", cell):
        return int(cell)
    return parse_rfc3339_ms(cell)


def entity_key(value: Any) -> str | None:
    """The entity of an event: a non-empty string, or a JSON integer taken as its decimal text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value != "":
        return value
    return None


# ---------------------------------------------------------------------------------------------------
# Field values
# ---------------------------------------------------------------------------------------------------


def resolve(record: Any, path: str) -> Any:
    """The value at a dotted path ("device.os") in a parsed JSON object, or MISSING."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value


def is_number(value: Any) -> bool:
    """JSON numbers only: a bool is not a number."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_scalar(value: Any) -> bool:
    """A string, number or boolean (not null, not an object or array)."""
    return isinstance(value, (str, int, float))  # bool is an int subclass, so it is included.


def value_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    return "composite"  # a JSON object or array


# ---------------------------------------------------------------------------------------------------
# `where` expressions: a small recursive-descent parser and an evaluator
# ---------------------------------------------------------------------------------------------------

_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_PATH_RE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


@dataclass(frozen=True)
class Token:
    kind: str  # "field", "literal", "op", "keyword", or the punctuation itself: ( ) [ ] ,
    value: Any
    pos: int


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c in "()[],":
            tokens.append(Token(c, c, i))
            i += 1
        elif text.startswith(("==", "!=", "<=", ">="), i):
            tokens.append(Token("op", text[i : i + 2], i))
            i += 2
        elif c in "<>":
            tokens.append(Token("op", c, i))
            i += 1
        elif c in "'\"":
            chars = []
            j = i + 1
            while True:
                if j >= len(text):
                    raise ReferenceError(f"where: unterminated string at offset {i}")
                if text[j] == c:
                    break
                if text[j] == "\\":
                    if j + 1 >= len(text):
                        raise ReferenceError(f"where: unterminated string at offset {i}")
                    esc = text[j + 1]
                    if esc == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[j + 2 : j + 6]):
                        chars.append(chr(int(text[j + 2 : j + 6], 16)))
                        j += 6
                        continue
                    if esc not in _ESCAPES:
                        raise ReferenceError(f"where: unknown escape \\{esc} at offset {j}")
                    chars.append(_ESCAPES[esc])
                    j += 2
                else:
                    chars.append(text[j])
                    j += 1
            tokens.append(Token("literal", "".join(chars), i))
            i = j + 1
        elif (m := _NUMBER_RE.match(text, i)) is not None:
            number_text = m.group(0)
            is_int = re.fullmatch(r"-?[0-9]+", number_text) is not None
            tokens.append(Token("literal", int(number_text) if is_int else float(number_text), i))
            i = m.end()
        elif (m := _PATH_RE.match(text, i)) is not None:
            word = m.group(0)
            if word in ("true", "false", "null"):
                tokens.append(Token("literal", {"true": True, "false": False, "null": None}[word], i))
            elif word in _KEYWORDS:
                tokens.append(Token("keyword", word, i))
            elif any(part in _KEYWORDS for part in word.split(".")):
                raise ReferenceError(f"where: a keyword cannot be part of the field path {word!r}")
            else:
                tokens.append(Token("field", word, i))
            i = m.end()
        else:
            raise ReferenceError(f"where: unexpected character {c!r} at offset {i}")
    return tokens


class _WhereParser:
    """Grammar (lowest precedence first):
    or_expr  := and_expr ("or" and_expr)*
    and_expr := not_expr ("and" not_expr)*
    not_expr := "not" not_expr | primary
    primary  := "(" or_expr ")" | operand [cmp_op operand | "in" "[" literal ("," literal)* "]"]
    operand  := field | literal

    Nodes are tuples: ("or", a, b), ("and", a, b), ("not", a), ("cmp", op, x, y), ("in", x, [values]),
    ("bare", x); operands are ("field", path) or ("literal", value).
    """

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.k = 0

    def _peek(self) -> Token | None:
        return self.tokens[self.k] if self.k < len(self.tokens) else None

    def _is(self, kind: str, value: Any = None) -> bool:
        tok = self._peek()
        return tok is not None and tok.kind == kind and (value is None or tok.value == value)

    def _take(self, kind: str, value: Any = None) -> Token:
        if not self._is(kind, value):
            tok = self._peek()
            where = f"offset {tok.pos}" if tok else "the end"
            raise ReferenceError(f"where {self.text!r}: expected {value or kind} at {where}")
        self.k += 1
        return self.tokens[self.k - 1]

    def parse(self) -> tuple:
        node = self._or()
        if self._peek() is not None:
            raise ReferenceError(f"where {self.text!r}: unexpected text at offset {self._peek().pos}")
        return node

    def _or(self) -> tuple:
        node = self._and()
        while self._is("keyword", "or"):
            self.k += 1
            node = ("or", node, self._and())
        return node

    def _and(self) -> tuple:
        node = self._not()
        while self._is("keyword", "and"):
            self.k += 1
            node = ("and", node, self._not())
        return node

    def _not(self) -> tuple:
        if self._is("keyword", "not"):
            self.k += 1
            return ("not", self._not())
        return self._primary()

    def _primary(self) -> tuple:
        if self._is("("):
            self.k += 1
            node = self._or()
            self._take(")")
            return node
        left = self._operand()
        if self._is("op"):
            op = self._take("op").value
            return ("cmp", op, left, self._operand())
        if self._is("keyword", "in"):
            self.k += 1
            self._take("[")
            values = [self._take("literal").value]
            while self._is(","):
                self.k += 1
                values.append(self._take("literal").value)
            self._take("]")
            return ("in", left, values)
        return ("bare", left)

    def _operand(self) -> tuple:
        if self._is("field"):
            return ("field", self._take("field").value)
        if self._is("literal"):
            return ("literal", self._take("literal").value)
        tok = self._peek()
        where = f"offset {tok.pos}" if tok else "the end"
        raise ReferenceError(f"where {self.text!r}: expected a field or a literal at {where}")


def parse_where(text: str) -> tuple:
    return _WhereParser(text).parse()


def _operand_value(operand: tuple, record: dict) -> Any:
    kind, payload = operand
    return resolve(record, payload) if kind == "field" else payload


def compare(op: str, a: Any, b: Any) -> bool:
    """One comparison under the `where` rules."""
    if a is MISSING or b is MISSING:
        return False  # for every operator, != included
    kind = value_kind(a)
    if kind != value_kind(b) or kind == "composite":
        return op == "!="  # unequal; ordering is false
    if kind == "number":  # int and float by value (Python compares them exactly)
        return {"==": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if kind == "string":  # ordering is bytewise on UTF-8
        x, y = a.encode("utf-8"), b.encode("utf-8")
        return {"==": x == y, "!=": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]
    # bool or null: (in)equality only
    if op == "==":
        return a == b
    if op == "!=":
        return a != b
    return False


def eval_where(node: tuple, record: dict) -> bool:
    kind = node[0]
    if kind == "or":
        return eval_where(node[1], record) or eval_where(node[2], record)
    if kind == "and":
        return eval_where(node[1], record) and eval_where(node[2], record)
    if kind == "not":
        return not eval_where(node[1], record)
    if kind == "cmp":
        return compare(node[1], _operand_value(node[2], record), _operand_value(node[3], record))
    if kind == "in":
        value = _operand_value(node[1], record)
        return any(compare("==", value, literal) for literal in node[2])
    if kind == "bare":
        return _operand_value(node[1], record) is True
    raise AssertionError(f"unknown node {node!r}")


# ---------------------------------------------------------------------------------------------------
# `derive` expressions: values computed from an event's fields (nulls propagate; see the README)
# ---------------------------------------------------------------------------------------------------

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_DERIVE_TOKEN = re.compile(r"\s*(?:(?P<num>(?:[0-9]|\.[0-9])[0-9.eE]*(?:(?<=[eE])[+-][0-9]+)?)|(?P<str>'(?:\\.|[^'\\])*'|\"(?:\\.|[^\"\\])*\")"
                           r"|(?P<op>==|!=|<=|>=|[-+*/%<>(),.])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))")


def _derive_tokens(text: str) -> list[tuple[str, Any]]:
    tokens, i = [], 0
    while i < len(text):
        if text[i:].strip() == "":
            break
        m = _DERIVE_TOKEN.match(text, i)
        if not m or m.end() == i:
            raise ReferenceError(f"derive {text!r}: cannot read at offset {i}")
        i = m.end()
        if m.group("num") is not None:
            n = m.group("num")
            tokens.append(("lit", int(n) if n.isdigit() else float(n)))
        elif m.group("str") is not None:
            body = m.group("str")[1:-1]
            tokens.append(("lit", re.sub(r"\\(.)", r"\1", body)))
        elif m.group("op") is not None:
            tokens.append(("op", m.group("op")))
        else:
            tokens.append(("word", m.group("word")))
    return tokens


class _DeriveParser:
    """Recursive descent over the grammar in src/spec/value_expr.h; builds nested tuples."""

    def __init__(self, text: str, timestamp_field: str):
        self.tokens, self.k, self.ts = _derive_tokens(text), 0, timestamp_field

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.k] if self.k < len(self.tokens) else None

    def take(self, kind: str, value: Any = None) -> bool:
        t = self.peek()
        if t and t[0] == kind and (value is None or t[1] == value):
            self.k += 1
            return True
        return False

    def parse(self) -> tuple:
        node = self.or_()
        assert self.peek() is None, "trailing text"
        return node

    def or_(self):
        node = self.and_()
        while self.take("word", "or"):
            node = ("or", node, self.and_())
        return node

    def and_(self):
        node = self.not_()
        while self.take("word", "and"):
            node = ("and", node, self.not_())
        return node

    def not_(self):
        if self.take("word", "not"):
            return ("not", self.not_())
        left = self.add()
        for op in ("==", "!=", "<=", ">=", "<", ">"):
            if self.take("op", op):
                return ("cmp", op, left, self.add())
        return left

    def add(self):
        node = self.mul()
        while (t := self.peek()) and t[0] == "op" and t[1] in "+-" and len(t[1]) == 1:
            self.k += 1
            node = ("arith", t[1], node, self.mul())
        return node

    def mul(self):
        node = self.unary()
        while (t := self.peek()) and t[0] == "op" and t[1] in ("*", "/", "%"):
            self.k += 1
            node = ("arith", t[1], node, self.unary())
        return node

    def unary(self):
        if self.take("op", "-"):
            return ("neg", self.unary())
        return self.primary()

    def primary(self):
        t = self.peek()
        self.k += 1
        if t[0] == "lit":
            return ("lit", t[1])
        if t == ("op", "("):
            node = self.or_()
            assert self.take("op", ")")
            return node
        word = t[1]
        if word in ("true", "false", "null"):
            return ("lit", {"true": True, "false": False, "null": None}[word])
        if self.take("op", "("):
            args = []
            if not self.take("op", ")"):
                while True:
                    args.append(self.or_())
                    if self.take("op", ")"):
                        break
                    assert self.take("op", ",")
            return ("call", word, args)
        path = word
        while self.take("op", "."):
            path += "." + self.peek()[1]
            self.k += 1
        return ("time",) if path == self.ts else ("field", path)


def _num(v: Any) -> bool:
    return is_number(v)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _in_int64(x: int) -> int | None:
    return x if _INT64_MIN <= x <= _INT64_MAX else None


def _truth(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def _derive_arith(op: str, a: Any, b: Any) -> Any:
    if not (_num(a) and _num(b)):
        return None
    if op == "/":
        return None if float(b) == 0 else float(a) / float(b)
    if _int(a) and _int(b):
        if op == "+":
            return _in_int64(a + b)
        if op == "-":
            return _in_int64(a - b)
        if op == "*":
            return _in_int64(a * b)
        if b == 0:
            return None
        r = abs(a) % abs(b)  # C's remainder: the sign of the dividend
        return -r if a < 0 else r
    x, y = float(a), float(b)
    return {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y,
            "%": lambda: None if y == 0 else math.fmod(x, y)}[op]()


def _derive_compare(op: str, a: Any, b: Any) -> Any:
    if a is None or b is None:
        return None
    ka, kb = value_kind(a), value_kind(b)
    if ka == kb == "number":
        if _int(a) and _int(b):
            x, y = a, b
        else:
            x, y = float(a), float(b)
    elif ka == kb == "string":
        x, y = a.encode("utf-8"), b.encode("utf-8")
    elif ka == kb == "bool" and op in ("==", "!="):
        return (a == b) == (op == "==")
    else:
        return {"==": False, "!=": True}.get(op)  # different types: unequal, not ordered
    return {"==": x == y, "!=": x != y, "<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


def _ascii_case(s: str, upper: bool) -> str:
    return "".join(chr(ord(c) - 32) if upper and "a" <= c <= "z" else chr(ord(c) + 32) if not upper and "A" <= c <= "Z"
                   else c for c in s)


def eval_derive(node: tuple, record: dict, time_ms: int) -> Any:
    kind = node[0]
    ev = lambda n: eval_derive(n, record, time_ms)  # noqa: E731
    if kind == "lit":
        return node[1]
    if kind == "time":
        return time_ms
    if kind == "field":
        v = resolve(record, node[1])
        return None if v is MISSING or isinstance(v, (dict, list)) else v
    if kind == "neg":
        v = ev(node[1])
        if _int(v):
            return _in_int64(-v)
        return -v if isinstance(v, float) else None
    if kind == "not":
        t = _truth(ev(node[1]))
        return None if t is None else not t
    if kind in ("and", "or"):
        a = _truth(ev(node[1]))
        short = kind == "or"
        if a is short:
            return short
        b = _truth(ev(node[2]))
        if b is short:
            return short
        return None if a is None or b is None else not short
    if kind == "arith":
        return _derive_arith(node[1], ev(node[2]), ev(node[3]))
    if kind == "cmp":
        return _derive_compare(node[1], ev(node[2]), ev(node[3]))
    name, args = node[1], node[2]
    if name == "if":
        return ev(args[1]) if _truth(ev(args[0])) is True else ev(args[2])
    if name == "coalesce":
        for a in args:
            v = ev(a)
            if v is not None:
                return v
        return None
    v = ev(args[0])
    if name == "abs":
        return _in_int64(abs(v)) if _int(v) else abs(v) if isinstance(v, float) else None
    if name == "log":
        return math.log(float(v)) if _num(v) and float(v) > 0 else None
    if name == "round":
        digits = 0
        if len(args) == 2:
            digits = ev(args[1])
            if not _int(digits) or not -18 <= digits <= 18:
                return None
        if _int(v) and digits >= 0:
            return v
        if not _num(v):
            return None
        scale = 10.0 ** digits
        scaled = float(v) * scale
        r = float(Decimal(scaled).to_integral_value(rounding=ROUND_HALF_UP)) / scale  # half away from zero
        return (int(r) if abs(r) < 9.2e18 else None) if _int(v) else r
    if name in ("lower", "upper"):
        return _ascii_case(v, name == "upper") if isinstance(v, str) else None
    if name == "length":
        return len(v) if isinstance(v, str) else None
    if name in ("hour_of_day", "day_of_week"):
        if not _int(v):
            return None
        days = v // 86_400_000
        return (v - days * 86_400_000) // 3_600_000 if name == "hour_of_day" else (days + 3) % 7 + 1
    raise ReferenceError(f"derive: unknown function {name!r}")


# ---------------------------------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------------------------------


@dataclass
class Window:
    kind: str  # lifetime | sliding | tumbling | session
    size_ms: int = 0
    slide_ms: int = 0  # sliding only; 0 means continuous
    gap_ms: int = 0  # session only


@dataclass
class Feature:
    name: str
    aggregation: str
    field: str | None  # None for count
    where_text: str | None
    where: tuple | None
    window: Window
    precision: int = 14
    percentile: Fraction | None = None  # approx_percentile: one of the spec's `percentiles`, exactly
    k: int = 0  # top_k, last_k: the list's length
    fields: tuple[str, ...] | None = None  # count_distinct over a list of fields (`field` is then the first)


@dataclass
class SchemaField:
    type: str  # string | number | int | bool | timestamp
    from_string: bool = False  # number/int: a string holding a JSON number reads as that number


SCHEMA_TYPES = ("string", "number", "int", "bool", "timestamp")


@dataclass
class Spec:
    name: str
    entity_field: str  # the first key field
    timestamp_field: str
    watermark: tuple[int, int] | None  # (max_out_of_orderness_ms, allowed_lateness_ms)
    features: list[Feature]
    dedup: tuple[str, int] | None = None  # (id field, within_ms)
    schema: dict[str, SchemaField] | None = None  # field path -> declared type; None without `schema:`
    derived: list[tuple[str, tuple]] = dataclass_field(default_factory=list)  # (name, parsed expression), in order
    ttl_ms: int | None = None  # state expiry (`ttl`); see assign_lives
    # A composite key (`entity: [user_id, merchant_id]`): its fields; an entity is then the tuple of their values.
    key_fields: list[str] | None = None
    # Reference tables: name -> (key field, valid_from field or None); joins: (table, event field holding the key).
    tables: dict[str, tuple[str, str | None]] = dataclass_field(default_factory=dict)
    joins: list[tuple[str, str]] = dataclass_field(default_factory=list)
    # Async lookups (`lookups:`), in spec order; see the "Async lookups" section below.
    lookups: list["Lookup"] = dataclass_field(default_factory=list)


def _parse_window(doc: Any, feature_name: str) -> Window:
    if not isinstance(doc, dict) or doc.get("type") not in WINDOW_TYPES:
        raise ReferenceError(f"feature {feature_name}: window.type must be one of {WINDOW_TYPES}")
    kind = doc["type"]
    if kind == "lifetime":
        return Window("lifetime")
    if kind == "session":
        return Window("session", gap_ms=parse_duration_ms(doc.get("gap")))
    size = parse_duration_ms(doc.get("size"))
    if kind == "tumbling":
        return Window("tumbling", size_ms=size)
    slide = parse_duration_ms(doc["slide"]) if doc.get("slide") is not None else 0
    if slide and size % slide != 0:
        raise ReferenceError(f"feature {feature_name}: the slide must divide the size")
    return Window("sliding", size_ms=size, slide_ms=slide)


def parse_spec(doc: Any) -> Spec:
    if not isinstance(doc, dict):
        raise ReferenceError("the spec must be a YAML mapping")
    watermark = None
    if doc.get("watermark") is not None:
        wm = doc["watermark"]
        watermark = (parse_duration_ms(wm["max_out_of_orderness"]), parse_duration_ms(wm["allowed_lateness"]))
    dedup = None
    if doc.get("dedup") is not None:
        dedup = (str(doc["dedup"]["field"]), parse_duration_ms(doc["dedup"].get("within", "24h")))
    features = []
    for f in doc.get("features") or []:
        name = str(f["name"])
        aggregation = f.get("aggregation")
        if aggregation not in AGGREGATIONS + LIST_AGGREGATIONS:
            raise ReferenceError(f"feature {name}: unknown aggregation {aggregation!r}")
        field = None
        if aggregation != "count":
            if not f.get("field"):
                raise ReferenceError(f"feature {name}: {aggregation} needs a field")
            field = str(f["field"]) if not isinstance(f["field"], list) else str(f["field"][0])
        fields = tuple(str(x) for x in f["field"]) if isinstance(f.get("field"), list) else None
        where_text = str(f["where"]) if f.get("where") is not None else None
        where = parse_where(where_text) if where_text is not None else None
        precision = int(f.get("precision", 14))
        window = _parse_window(f.get("window"), name)
        if aggregation == "approx_percentile":
            # One output column per percentile, named <name>_p<percent>: 0.5 -> _p50, 0.999 -> _p99_9.
            for p in f["percentiles"]:
                exact = Fraction(str(p))
                percent = exact * 100
                whole = int(percent)
                decimals = _percent_decimals(percent - whole)
                column = f"{name}_p{whole}" + (f"_{decimals}" if decimals else "")
                features.append(Feature(column, aggregation, field, where_text, where, window, precision, exact))
            continue
        features.append(Feature(name, aggregation, field, where_text, where, window, precision,
                                k=int(f.get("k", 0)), fields=fields))
    schema = None
    if doc.get("schema") is not None:
        schema = {}
        for path, declared in doc["schema"].items():
            if isinstance(declared, dict):
                entry = SchemaField(str(declared["type"]), bool(declared.get("from_string", False)))
            else:
                entry = SchemaField(str(declared))
            if entry.type not in SCHEMA_TYPES:
                raise ReferenceError(f"schema: unknown type {entry.type!r} for {path!r}")
            schema[str(path)] = entry
    derived = [(str(d["name"]), _DeriveParser(str(d["expr"]), str(doc["timestamp"])).parse())
               for d in doc.get("derive") or []]
    ttl_ms = parse_duration_ms(doc["ttl"]) if doc.get("ttl") is not None else None
    key_fields = [str(f) for f in doc["entity"]] if isinstance(doc["entity"], list) else None
    entity_field = key_fields[0] if key_fields else str(doc["entity"])
    tables = {str(t["name"]): (str(t["key"]), str(t["valid_from"]) if t.get("valid_from") else None)
              for t in doc.get("tables") or []}
    # PyYAML reads the key `on` as YAML 1.1's boolean true; YAML 1.2 (the spec's parser) as the text "on".
    joins = [(str(j["table"]), str(j["on"] if "on" in j else j[True])) for j in doc.get("joins") or []]
    lookups = [Lookup(str(item["name"]), str(item["type"]),
                      str(item["key"] if item["type"] == "redis" else item["url"]),
                      str(item.get("on_timeout", "missing")))
               for item in doc.get("lookups") or []]
    return Spec(str(doc.get("name", "")), entity_field, str(doc["timestamp"]), watermark, features, dedup,
                schema, derived, ttl_ms, key_fields, tables, joins, lookups)


def _percent_decimals(fraction: Fraction) -> str:
    """The decimal digits of a fraction in [0, 1) with a finite decimal expansion, without trailing zeros."""
    digits = ""
    while fraction:
        fraction *= 10
        digits += str(int(fraction))
        fraction -= int(fraction)
    return digits


def load_spec(path: str) -> Spec:
    with open(path, encoding="utf-8") as f:
        return parse_spec(yaml.safe_load(f))


# ---------------------------------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------------------------------


@dataclass
class Event:
    line: int  # physical line in the events file, 1-based
    entity: str | tuple  # a tuple of the key fields' values with a composite key
    time_ms: int
    record: dict
    life: int = 0  # with a ttl: which life of its entity the event belongs to (assign_lives)


@dataclass
class DeadLetter:
    line: int
    reason: str  # "late" for late events, "duplicate" for duplicates; free text otherwise


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_int(text: str) -> int | float:
    value = int(text)
    if INT64_MIN <= value <= INT64_MAX:
        return value
    if INT64_MAX < value <= 2**64 - 1:
        return float(value)  # An unsigned 64-bit integer beyond int64 is read as a double.
    # The contract: an integer below -2**63 or above 2**64 - 1 is not a number Freshet reads, and the
    # line is rejected as invalid JSON.
    raise ValueError(f"integer {text} is out of range")


def _json_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _check_strings(value: Any) -> None:
    """Raises when a string holds a lone surrogate (from a \\ud800 escape): not valid Unicode."""
    if isinstance(value, str):
        value.encode("utf-8")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def parse_json_line(raw: bytes) -> Any:
    """The parsed JSON value of one line; raises ValueError when it is not valid UTF-8 JSON."""
    text = raw.decode("utf-8")  # strict: invalid UTF-8 raises (UnicodeDecodeError is a ValueError)
    value = json.loads(text, parse_constant=_reject_constant, parse_int=_json_int, parse_float=_json_float)
    _check_strings(value)
    return value


def split_lines(data: bytes) -> list[bytes]:
    """Physical lines; a final newline ends the last line rather than starting an empty one."""
    if not data:
        return []
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return lines


# ---------------------------------------------------------------------------------------------------
# Async lookups (README: "Async lookups" in Semantics). The reference does not call a store: the test gives it
# what the store served, as a function (lookup name, rendered key or url) -> the answer as a dict, None for no
# answer, or TIMEOUT for a request that got no answer in time (or failed).

TIMEOUT = "timeout"


@dataclass
class Lookup:
    name: str
    type: str      # redis | http
    template: str  # the key (redis) or url (http), with {field} placeholders
    on_timeout: str  # missing | dead_letter


_PLACEHOLDER_RE = re.compile(r"\{([A-Za-z0-9_.]+)\}")


def render_lookup_target(lookup: Lookup, record: dict) -> str | None:
    """The key or url of `lookup` for an event: each {field} replaced by the event's field (text as it is, an
    integer as its digits; in a url percent-encoded, only A-Z a-z 0-9 - _ . ~ kept). None when a field is absent
    or of another type: the event is not looked up."""
    parts: list[str] = []
    at = 0
    for match in _PLACEHOLDER_RE.finditer(lookup.template):
        value = resolve(record, match.group(1))
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return None
        text = value if isinstance(value, str) else str(value)
        if lookup.type == "http":
            text = urllib.parse.quote(text, safe="-_.~")
        parts.append(lookup.template[at:match.start()])
        parts.append(text)
        at = match.end()
    parts.append(lookup.template[at:])
    return "".join(parts)


def redis_hash_row(fields: dict[str, str]) -> dict | None:
    """A Redis hash as the answer a lookup sees: a value in JSON number syntax is that number, any other text;
    an empty (or absent) hash is no answer."""
    if not fields:
        return None
    return {k: (json.loads(v) if _JSON_NUMBER_RE.fullmatch(v) else v) for k, v in fields.items()}


def apply_lookups(record: dict, spec: Spec, answer_of) -> str | None:
    """Puts each lookup's answer into the record under the lookup's name (absent without one), from
    `answer_of(name, target)`. Returns the dead-letter reason when a lookup with on_timeout: dead_letter timed out."""
    answers = {}
    for lookup in spec.lookups:
        target = render_lookup_target(lookup, record)
        answers[lookup.name] = None if target is None else answer_of(lookup.name, target)
        if answers[lookup.name] == TIMEOUT and lookup.on_timeout == "dead_letter":
            return "lookup_timeout"
    for lookup in spec.lookups:
        record.pop(lookup.name, None)
        if isinstance(answers[lookup.name], dict):
            record[lookup.name] = answers[lookup.name]
    return None


# Reference tables and joins (README: "Reference tables and joins", and the time rule in Semantics).


@dataclass
class TableVersion:
    """One row of a reference table as it arrived: before input line `before_line` + 1 (0: before every line).
    `key`: the key given beside the row (a Kafka message key; None: the row's key field). `row` None: a deletion
    of `key` (a Kafka tombstone)."""
    table: str
    row: dict | None
    before_line: int
    key: str | None = None


def version_key(spec: Spec, v: TableVersion) -> str | None:
    return v.key if v.key is not None else entity_key(resolve(v.row, spec.tables[v.table][0]))


def table_versions(table: str, rows: list[dict], before_line: int) -> list[TableVersion]:
    return [TableVersion(table, row, before_line) for row in rows]


def deletion_mark(row: dict) -> bool | str:
    """A row's `_deleted` field (README: "Reference tables and joins", Deletions): True when the row deletes its
    key (JSON true, or the text "true" as a CSV cell reads), False when absent or false, else why it is no row."""
    mark = row.get("_deleted", False)
    if mark is True or mark == "true":
        return True
    if mark is False or mark == "false":
        return False
    return "bad _deleted"


def file_table_versions(spec: Spec, table: str, rows: list[dict], before_line: int) -> list[TableVersion]:
    """The versions of table-file (or PUT) rows that arrived before input line `before_line` + 1: a row with
    `_deleted` true deletes the key its key field names; the others are versions (rows the engine rejects are not
    given)."""
    out = []
    for row in rows:
        mark = deletion_mark(row)
        if isinstance(mark, str):
            raise ReferenceError(f"{row!r}: {mark}")
        key = entity_key(resolve(row, spec.tables[table][0]))
        out.append(TableVersion(table, None, before_line, key) if mark else TableVersion(table, row, before_line))
    return out


def joined_row(spec: Spec, table: str, key: str | None, time_ms: int, line: int,
               versions: list[TableVersion]) -> dict | None:
    """The row an event on input line `line` (1-based) at `time_ms` joins: among the versions of `table` for `key`
    that arrived before the line, the one with the greatest valid_from <= time_ms, the later arrival on a tie
    (without valid_from: the latest arrival). None when there is none."""
    if key is None:
        return None
    key_field, valid_from_field = spec.tables[table]
    best = None
    # A deletion hides every version of its key that arrived before it.
    deleted_at = max((order for order, v in enumerate(versions) if v.row is None and v.table == table
                      and v.key == key and v.before_line <= line - 1), default=-1)
    for order, v in enumerate(versions):
        if (v.table != table or v.before_line > line - 1 or order < deleted_at or v.row is None
                or version_key(spec, v) != key):
            continue
        valid_from = event_time_ms(resolve(v.row, valid_from_field)) if valid_from_field else None
        if valid_from_field and (valid_from is None or valid_from > time_ms):
            continue
        rank = (valid_from if valid_from is not None else INT64_MIN, order)
        if best is None or rank > best[0]:
            best = (rank, v.row)
    return best[1] if best else None


def apply_joins(record: dict, time_ms: int, line: int, spec: Spec, versions: list[TableVersion]) -> None:
    """Puts each joined table's row into the record under the table's name, where `table.column` paths find it;
    without a row the name is absent, so the joined fields are missing (an event's own field of that name is
    never read)."""
    for table, on in spec.joins:
        record.pop(table, None)
        row = joined_row(spec, table, entity_key(resolve(record, on)), time_ms, line, versions)
        if row is not None:
            record[table] = row


def late_versions(spec: Spec, data: bytes, versions: list[TableVersion]) -> dict[str, int]:
    """Per table, the versions that arrived late: with a valid_from at or before the newest event time accepted
    before their arrival."""
    events, _ = read_events(data, spec, versions)
    return late_versions_among(spec, events, versions)


def late_versions_among(spec: Spec, events: list[Event], versions: list[TableVersion]) -> dict[str, int]:
    """late_versions over accepted events already read, each numbered by its `line` in the order versions'
    `before_line` counts (an event on line L came before a version with before_line >= L)."""
    late: dict[str, int] = {}
    for v in versions:
        valid_from_field = spec.tables[v.table][1]
        if valid_from_field is None or v.row is None:
            continue
        before = [e.time_ms for e in events if e.line <= v.before_line]
        if before and event_time_ms(resolve(v.row, valid_from_field)) <= max(before):
            late[v.table] = late.get(v.table, 0) + 1
    return late


def kafka_table_version(spec: Spec, table: str, key: bytes | None, value: bytes | None,
                        before_line: int) -> TableVersion | str:
    """The version a message of a Kafka table topic brings (README: "Reference tables and joins", Kafka), or why it
    is no row: the key is the message key (UTF-8 text), the value a JSON object whose key field, when present,
    names the same key, and whose valid_from is readable; a null value deletes the key."""
    try:
        text_key = key.decode("utf-8") if key else None
    except UnicodeDecodeError:
        text_key = None
    if not text_key:
        return "no key"
    if value is None:
        return TableVersion(table, None, before_line, text_key)
    try:
        row = json.loads(value)
    except ValueError:
        return "not JSON"
    if not isinstance(row, dict):
        return "not an object"
    key_field, valid_from_field = spec.tables[table]
    own = resolve(row, key_field)
    if own is not MISSING and entity_key(own) != text_key:
        return "key field differs from the message key"
    mark = deletion_mark(row)
    if mark is not False:
        return mark if isinstance(mark, str) else TableVersion(table, None, before_line, text_key)
    if valid_from_field and event_time_ms(resolve(row, valid_from_field)) is None:
        return "bad valid_from"
    return TableVersion(table, row, before_line, text_key)


def visible_versions(spec: Spec, table: str, versions: list[TableVersion], horizon_ms: int) -> int:
    """How many distinct versions (key, valid_from) of `table` some event at `horizon_ms` or later can still see:
    those with no other version of their key valid from after them and at or before the horizon (README,
    Semantics: pruning). By brute force over every pair."""
    key_field, valid_from_field = spec.tables[table]
    distinct = {(entity_key(resolve(v.row, key_field)), event_time_ms(resolve(v.row, valid_from_field)))
                for v in versions if v.table == table}
    return sum(1 for key, vf in distinct
               if not any(k == key and vf < other <= horizon_ms for k, other in distinct))


def parse_event(raw: bytes, line: int, spec: Spec, versions: list[TableVersion] | None = None,
                lookup_answers=None) -> Event | str:
    """An Event, or the reason the line is rejected. `versions`: the reference tables' rows, for the joins;
    `lookup_answers`: what the store served, for the lookups (see apply_lookups)."""
    try:
        record = parse_json_line(raw)
    except (ValueError, RecursionError):
        return "invalid JSON"
    if not isinstance(record, dict):
        return "not a JSON object"
    convert_numbers_in_strings(record, spec)
    if spec.key_fields:
        parts = [entity_key(resolve(record, f)) for f in spec.key_fields]
        missing = [f for f, part in zip(spec.key_fields, parts) if part is None]
        if missing:
            return f"key field '{missing[0]}' missing or not a non-empty string or integer"
        entity: str | tuple | None = tuple(parts)
    else:
        entity = entity_key(resolve(record, spec.entity_field))
    if entity is None:
        return f"entity field '{spec.entity_field}' missing or not a non-empty string or integer"
    time_ms = event_time_ms(resolve(record, spec.timestamp_field))
    if time_ms is None:
        return f"timestamp field '{spec.timestamp_field}' missing or not epoch ms / RFC 3339"
    if spec.joins:
        apply_joins(record, time_ms, line, spec, versions or [])
    if spec.lookups:
        failed = apply_lookups(record, spec, lookup_answers or (lambda name, target: None))
        if failed is not None:
            return failed
    for name, expr in spec.derived:  # in order: each may read the ones before it; a null is stored as JSON null
        record[name] = eval_derive(expr, record, time_ms)
    return Event(line, entity, time_ms, record)


_JSON_NUMBER_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def number_in_string(text: str, declared: str) -> int | float | None:
    """The number a string holds for a `from_string` field: JSON number syntax only, nothing around it. An integer
    within int64 is an int; another number a float (finite), except that an int field takes integers only."""
    match = _JSON_NUMBER_RE.fullmatch(text)
    if match is None:
        return None
    if match.group(1) is None and match.group(2) is None:
        value = int(text)
        if INT64_MIN <= value <= INT64_MAX:
            return value
    if declared == "int":
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def convert_numbers_in_strings(record: dict, spec: Spec) -> None:
    """Replaces, in place, the strings of `from_string` fields that hold a number by that number."""
    for path, declared in (spec.schema or {}).items():
        if not declared.from_string:
            continue
        parts = path.split(".")
        parent = resolve(record, ".".join(parts[:-1])) if len(parts) > 1 else record
        if isinstance(parent, dict) and isinstance(parent.get(parts[-1]), str):
            number = number_in_string(parent[parts[-1]], declared.type)
            if number is not None:
                parent[parts[-1]] = number


def event_id(value: Any) -> str | None:
    """The dedup id of an event: read like the entity (a non-empty string, or an integer as its decimal text);
    anything else is no id."""
    return entity_key(value)


def read_events(data: bytes, spec: Spec, versions: list[TableVersion] | None = None,
                lookup_answers=None) -> tuple[list[Event], list[DeadLetter]]:
    """The accepted events in input order, and one dead letter per rejected, late or duplicate line. `versions`:
    the reference tables' rows with where they arrived among the lines (see joined_row)."""
    events: list[Event] = []
    dead: list[DeadLetter] = []
    max_time: int | None = None  # largest event time among events accepted so far
    accepted_times: dict[tuple[str, str], list[int]] = {}  # (entity, id) -> times of the accepted events
    for line, raw in enumerate(split_lines(data), start=1):
        parsed = parse_event(raw, line, spec, versions, lookup_answers)
        if isinstance(parsed, str):
            dead.append(DeadLetter(line, parsed))
            continue
        delay = 0  # max_out_of_orderness + allowed_lateness
        if spec.watermark is not None:
            delay = spec.watermark[0] + spec.watermark[1]
            if max_time is not None and parsed.time_ms < max_time - delay:
                dead.append(DeadLetter(line, "late"))
                continue
        if spec.dedup is not None:
            # A duplicate: an accepted earlier event of the entity with the same id, within `within` of this one,
            # and still remembered (its time >= M - within - delay; without a watermark that forgets resends more
            # than `within` older than the newest event).
            field, within = spec.dedup
            key = event_id(resolve(parsed.record, field))
            if key is not None:
                earlier = accepted_times.setdefault((parsed.entity, key), [])
                if any(abs(parsed.time_ms - t) <= within and t >= max_time - within - delay for t in earlier):
                    dead.append(DeadLetter(line, "duplicate"))
                    continue
                earlier.append(parsed.time_ms)
        events.append(parsed)
        max_time = parsed.time_ms if max_time is None else max(max_time, parsed.time_ms)
    return events, dead


def read_partitioned_events(spec: Spec, partitions: dict[int, list[tuple[int, bytes]]],
                            versions: list[TableVersion], seq_of: dict[tuple[int, int], int]
                            ) -> tuple[list[Event], dict[tuple[int, int], str]]:
    """A Kafka source with reference tables. Each partition is an input of its own (README, Semantics): its
    messages in offset order, its own lateness clock; so `read_events` runs over each partition's messages
    (`partitions`: {partition: [(offset, value)]}). Table versions arrive between the events of all partitions:
    `versions` in arrival order, each `before_line` the stream-wide seq of the first accepted event after it (the
    table history's `seq`). `seq_of`: the seq recorded for each accepted event, by (partition, offset); within a
    partition seqs must rise with the offsets (else ReferenceError). A version is seen by the partition's events
    whose seq is at or after its own: its before_line in the partition is the count of the partition's messages up
    to the last accepted one with a lower seq (a rejected message's joins are never read).

    Returns the accepted events in seq order, each with `line` = its seq + 1 (so late_versions_among and
    joined_row count them as versions do), and the reason of each rejected message by (partition, offset)."""
    accepted: list[Event] = []
    dead: dict[tuple[int, int], str] = {}
    for partition, messages in sorted(partitions.items()):
        messages = sorted(messages)
        seqs = [seq_of.get((partition, offset)) for offset, _ in messages]
        known = [s for s in seqs if s is not None]
        if known != sorted(known):
            raise ReferenceError(f"partition {partition}: seqs do not rise with the offsets")

        def before_line(seq: int) -> int:
            return max((k + 1 for k, s in enumerate(seqs) if s is not None and s < seq), default=0)
        local = [TableVersion(v.table, v.row, before_line(v.before_line), v.key) for v in versions]
        events, letters = read_events(b"".join(value + b"\n" for _, value in messages), spec, local)
        for letter in letters:
            dead[(partition, messages[letter.line - 1][0])] = letter.reason
        for event in events:
            seq = seqs[event.line - 1]
            if seq is None:
                raise ReferenceError(f"partition {partition} offset {messages[event.line - 1][0]}: accepted by the "
                                     "reference but recorded with no seq")
            event.line = seq + 1
            accepted.append(event)
    accepted.sort(key=lambda e: e.line)
    return accepted, dead


def assign_lives(events: list[Event], spec: Spec) -> None:
    """State expiry (`ttl`): sets each accepted event's `life`, in input order.

    L is the low watermark right after the event's admission: the largest accepted event time so far (this one
    included) minus max_out_of_orderness + allowed_lateness. When L is more than ttl after the newest event of the
    entity's current life, the entity has expired and this event starts its next life. A value as of t then reads
    only the life of the entity's latest event at or before t, and is the empty-window value when t is more than
    ttl after that event (see `life_as_of`).
    """
    if spec.ttl_ms is None:
        return
    delay = spec.watermark[0] + spec.watermark[1] if spec.watermark is not None else 0
    max_time: int | None = None
    current: dict[str, tuple[int, int]] = {}  # entity -> (life, newest event time of that life)
    for event in events:
        max_time = event.time_ms if max_time is None else max(max_time, event.time_ms)
        low = max_time - delay
        life, newest = current.get(event.entity, (0, None))
        if newest is not None and low - newest > spec.ttl_ms:
            life, newest = life + 1, None
        event.life = life
        current[event.entity] = (life, event.time_ms if newest is None else max(newest, event.time_ms))


EXPIRED = -1  # life_as_of: the entity has expired at t


def life_as_of(spec: Spec, entity_events: list[Event], t: int) -> int | None:
    """With a ttl: the life whose events a value as of t reads (that of the latest event at or before t), or
    EXPIRED when t is more than ttl after that event; None without a ttl or without an event at or before t."""
    if spec.ttl_ms is None:
        return None
    before = [e for e in entity_events if e.time_ms <= t]
    if not before:
        return None
    latest = max(before, key=lambda e: e.time_ms)
    return EXPIRED if t - latest.time_ms > spec.ttl_ms else latest.life


def group_by_entity(events: list[Event]) -> dict[str, list[Event]]:
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event.entity, []).append(event)
    return groups


# ---------------------------------------------------------------------------------------------------
# Contribution, windows, aggregation
# ---------------------------------------------------------------------------------------------------


def fits_declared(declared: str, value: Any) -> bool:
    """Whether a present, non-null value has the type a schema declares."""
    if declared == "string":
        return isinstance(value, str)
    if declared == "number":
        return is_number(value)
    if declared == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if declared == "bool":
        return isinstance(value, bool)
    if declared == "timestamp":
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    raise AssertionError(declared)


def skip_reason(aggregation: str, value: Any, declared: str | None = None) -> str | None:
    """Why an event's field value cannot contribute to the aggregation ("missing", "null", "wrong_type"), or None
    when it can. `declared`: the field's type in the spec's schema, if any."""
    if aggregation == "count":
        return None
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if declared is not None and not fits_declared(declared, value):
        return "wrong_type"
    if aggregation in NUMERIC_AGGREGATIONS:
        return None if is_number(value) else "wrong_type"
    return None if is_scalar(value) else "wrong_type"  # last, count_distinct, approx_count_distinct


def field_qualifies(aggregation: str, value: Any, declared: str | None = None) -> bool:
    """Whether an event's field value can contribute to the aggregation."""
    return skip_reason(aggregation, value, declared) is None


def declared_type(spec: Spec | None, path: str | None) -> str | None:
    if spec is None or spec.schema is None or path is None or path not in spec.schema:
        return None
    return spec.schema[path].type


def qualifies(feature: Feature, event: Event, spec: Spec | None = None) -> bool:
    """Whether the event passes the feature's `where` and has a usable field (time aside)."""
    if feature.where is not None and not eval_where(feature.where, event.record):
        return False
    return input_skip_reason(feature, event.record, spec) is None


def skip_counts(spec: Spec, events: list[Event]) -> dict[str, dict[str, int]]:
    """Per feature that skipped any: the accepted events that passed its `where` but whose field could not
    contribute, by reason ("missing", "null", "wrong_type"; only reasons that occurred)."""
    counts: dict[str, dict[str, int]] = {}
    for feature in spec.features:
        for event in events:
            if feature.where is not None and not eval_where(feature.where, event.record):
                continue
            reason = input_skip_reason(feature, event.record, spec)
            if reason is not None:
                by_reason = counts.setdefault(feature.name, {})
                by_reason[reason] = by_reason.get(reason, 0) + 1
    return counts


def select_window(window: Window, events: list[Event], t: int) -> list[Event]:
    """The events (all with time <= t) that the window as of t covers."""
    if window.kind == "lifetime":
        return list(events)
    if window.kind == "sliding" and window.slide_ms == 0:
        return [e for e in events if t - window.size_ms < e.time_ms <= t]
    if window.kind in ("sliding", "tumbling"):
        tile_ms = window.slide_ms if window.kind == "sliding" else window.size_ms
        tiles = window.size_ms // tile_ms
        first_tile = t // tile_ms - (tiles - 1)  # Python's // is floor division, also for negatives
        return [e for e in events if e.time_ms // tile_ms >= first_tile and e.time_ms <= t]
    if window.kind == "session":
        ordered = sorted(events, key=lambda e: (e.time_ms, e.line))
        if not ordered or t - ordered[-1].time_ms >= window.gap_ms:
            return []
        start = len(ordered) - 1
        while start > 0 and ordered[start].time_ms - ordered[start - 1].time_ms < window.gap_ms:
            start -= 1
        return ordered[start:]
    raise AssertionError(f"unknown window {window!r}")


def distinct_key(value: Any) -> tuple:
    """Equal keys for equal values: numbers by value (1 == 1.0), strings by text, booleans apart."""
    if isinstance(value, FieldTuple):
        return ("tuple", tuple(distinct_key(v) for v in value))
    if isinstance(value, bool):
        return ("bool", value)
    if is_number(value):
        return ("number", Fraction(value))
    return ("string", value)


def aggregate(feature: Feature, window_events: list[Event]) -> Any:
    """The feature's value over the window's events; None means null."""
    agg = feature.aggregation
    if agg == "count":
        return len(window_events)
    values = [input_value(feature, e.record) for e in window_events]
    if agg == "top_k":
        return top_k(values, feature.k)
    if agg == "last_k":
        return last_k(feature, window_events)
    if agg == "sum":
        if all(isinstance(v, int) for v in values):  # no bools here: they never qualify for sum
            total = sum(values)
            return total if INT64_MIN <= total <= INT64_MAX else float(total)
        return float(sum(Fraction(v) for v in values))
    if agg in ("count_distinct", "approx_count_distinct"):
        return len({distinct_key(v) for v in values})
    if not values:
        return None
    if agg == "mean":
        return float(sum(Fraction(v) for v in values) / len(values))
    # min/max: an integer wins a tie with an equal float, whatever the order (the contract).
    if agg == "min":
        best = min(values)
        return next((v for v in values if v == best and isinstance(v, int)), best)
    if agg == "max":
        best = max(values)
        return next((v for v in values if v == best and isinstance(v, int)), best)
    if agg == "stddev":
        exact = [Fraction(v) for v in values]
        mean = sum(exact) / len(exact)
        variance = sum((x - mean) ** 2 for x in exact) / len(exact)
        return math.sqrt(float(variance))
    if agg == "last":
        latest = max(window_events, key=lambda e: (e.time_ms, e.line))
        return resolve(latest.record, feature.field)
    if agg == "first":
        earliest = min(window_events, key=lambda e: (e.time_ms, e.line))
        return resolve(earliest.record, feature.field)
    if agg == "approx_percentile":
        ordered = sorted(values, key=Fraction)
        return float(ordered[percentile_rank(feature.percentile, len(ordered)) - 1])
    raise AssertionError(f"unknown aggregation {agg}")


# ---------------------------------------------------------------------------------------------------
# Lists of fields (count_distinct of combinations) and the list aggregations (top_k, last_k)
# ---------------------------------------------------------------------------------------------------


class FieldTuple(tuple):
    """The values of a feature's list of fields in one event (count_distinct over `field: [a, b]`)."""


def input_skip_reason(feature: Feature, record: Any, spec: Spec | None = None) -> str | None:
    """Why the event's field(s) cannot contribute to the feature, or None. With a list of fields, the first field
    that cannot gives the reason (each judged as a single field is)."""
    if feature.fields is None:
        value = resolve(record, feature.field) if feature.field else MISSING
        return skip_reason(feature.aggregation, value, declared_type(spec, feature.field))
    for path in feature.fields:
        reason = skip_reason(feature.aggregation, resolve(record, path), declared_type(spec, path))
        if reason is not None:
            return reason
    return None


def input_value(feature: Feature, record: Any) -> Any:
    """What the event contributes: its field's value, or a FieldTuple of its fields' values."""
    if feature.fields is None:
        return resolve(record, feature.field)
    return FieldTuple(resolve(record, path) for path in feature.fields)


def top_k_capacity(k: int) -> int:
    """The counters of the engine's top_k summary: exact up to this many distinct values in the window."""
    return max(64, 4 * k)


def _canonical(key: tuple) -> Any:
    """The value a distinct key is written as: an integral number within int64 as an integer (1.0 is 1)."""
    kind, x = key
    if kind == "number":
        return int(x) if x.denominator == 1 and -2**63 <= x < 2**63 else float(x)
    return x


def _tie_order(key: tuple) -> tuple:
    """Among equally frequent values: booleans (false first), numbers by value, strings by their UTF-8 bytes."""
    kind, x = key
    if kind == "bool":
        return (0, x)
    if kind == "number":
        return (1, x)
    return (2, x.encode("utf-8"))


def value_counts(values: list) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for v in values:
        key = distinct_key(v)
        counts[key] = counts.get(key, 0) + 1
    return counts


def top_k(values: list, k: int) -> list[dict]:
    """The k most frequent values with their counts, exactly: [{"value": v, "count": n}, ...], count descending."""
    counts = value_counts(values)
    ranked = sorted(counts, key=lambda key: (-counts[key], _tie_order(key)))
    return [{"value": _canonical(key), "count": counts[key]} for key in ranked[:k]]


def last_k(feature: Feature, window_events: list[Event]) -> list:
    """The field values of the k newest events, newest first (time, then input order)."""
    newest = sorted(window_events, key=lambda e: (e.time_ms, e.line), reverse=True)[:feature.k]
    return [resolve(e.record, feature.field) for e in newest]


def typed(value: Any) -> Any:
    """A JSON value with its type made explicit, so that True, 1 and 1.0 compare unequal: lists and dicts
    recursively."""
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, dict):
        return {key: typed(v) for key, v in value.items()}
    return (type(value).__name__, value)


def top_k_ok(values: list, k: int, got: list | None) -> bool:
    """Whether the engine's top_k answer is right for the window's values: equal to the exact answer while the
    window holds at most top_k_capacity(k) distinct values; beyond, at most k distinct values of the window in
    the tie order, each count c of a value with true count f within f - n/(C+1) <= c <= f (Misra-Gries)."""
    if got is None:
        return False
    capacity = top_k_capacity(k)
    counts = value_counts(values)
    if len(counts) <= capacity:
        return typed(got) == typed(top_k(values, k))
    if len(got) > k:
        return False
    slack = Fraction(len(values), capacity + 1)
    keys = []
    for item in got:
        value = item["value"]
        key = distinct_key(value)
        if key not in counts or typed(value) != typed(_canonical(key)):
            return False
        f, c = counts[key], item["count"]
        if not (isinstance(c, int) and 0 < c <= f and f - slack <= c):
            return False
        keys.append((-c, _tie_order(key)))
    return keys == sorted(keys) and len(set(keys)) == len(keys)


def value_from_qualifying(feature: Feature, qualifying: list[Event], t: int) -> tuple[Any, list[Event]]:
    """The value as of t from the entity's qualifying events (input order), and the window's events.

    The contributing events are the qualifying ones at or before t; the window chooses among them.
    """
    contributing = [e for e in qualifying if e.time_ms <= t]
    window_events = select_window(feature.window, contributing, t)
    return aggregate(feature, window_events), window_events


def feature_value(feature: Feature, entity_events: list[Event], t: int,
                  spec: Spec | None = None) -> tuple[Any, list[Event]]:
    """The value of one feature for one entity as of t, and the window's events (for debugging)."""
    return value_from_qualifying(feature, [e for e in entity_events if qualifies(feature, e, spec)], t)


class Evaluator:
    """Feature values for many rows. Which events qualify for a feature does not depend on the row, so
    it is worked out once per (feature, entity) rather than once per row; nothing else is shared."""

    def __init__(self, spec: Spec, events: list[Event]):
        self.spec = spec
        assign_lives(events, spec)
        self.by_entity = group_by_entity(events)
        self.qualifying: dict[tuple[int, str], list[Event]] = {}

    def value(self, feature_index: int, entity: str, t: int) -> tuple[Any, list[Event]]:
        feature = self.spec.features[feature_index]
        key = (feature_index, entity)
        if key not in self.qualifying:
            self.qualifying[key] = [e for e in self.by_entity.get(entity, []) if qualifies(feature, e, self.spec)]
        qualifying = self.qualifying[key]
        life = life_as_of(self.spec, self.by_entity.get(entity, []), t)
        if life is not None:
            qualifying = [e for e in qualifying if e.life == life]  # EXPIRED matches no event
        return value_from_qualifying(feature, qualifying, t)


def percentile_rank(p: Fraction, n: int) -> int:
    """The 1-based nearest rank of percentile p among n values: max(1, ceil(p * n))."""
    return max(1, math.ceil(p * n))


def percentile_rank_error_bound(n: int) -> Fraction:
    """The largest rank error the engine's sketch may make over n values: 0 up to the level capacity k,
    else L * n / k with L = floor(log2(n / k)) + 1."""
    k = QUANTILE_LEVEL_CAPACITY
    if n <= k:
        return Fraction(0)
    levels = 0
    while k << levels <= n:
        levels += 1
    return Fraction(levels * n, k)


def approx_percentile_ok(values: list, p: Fraction, got: float | None) -> bool:
    """Whether `got` is an acceptable approx_percentile p of `values`: the exact nearest-rank value up to
    the level capacity, else a value of the window whose rank is within the bound: fewer than r + E values
    below it and at least r - E at or below it. Compared as doubles, which the engine keeps (doubles compare
    exactly)."""
    if not values:
        return got is None
    if got is None:
        return False
    ordered = sorted(float(v) for v in values)
    r = percentile_rank(p, len(ordered))
    bound = percentile_rank_error_bound(len(ordered))
    if bound == 0:
        return got == ordered[r - 1]
    below = bisect.bisect_left(ordered, got)
    at_or_below = bisect.bisect_right(ordered, got)
    return at_or_below > below and below < r + bound and at_or_below >= r - bound


def approx_count_distinct_ok(exact: int, estimate: float, precision: int) -> bool:
    """The accuracy promised for approx_count_distinct at precision p."""
    if exact <= 2**precision / 32:
        return estimate == exact
    return abs(estimate - exact) <= 4 * 1.04 / math.sqrt(2**precision) * exact


def list_element_text(value: Any) -> str | None:
    """A top_k/last_k value as the offline store's list columns keep it (README, "The offline store"): a string as
    itself, a boolean as true/false, a number as its shortest decimal text (an integral one without ".0")."""
    if value is None:
        return None
    text = format_value(value)
    return text[:-2] if isinstance(value, float) and text.endswith(".0") else text


def list_from_table(aggregation: str, cell: list | None, window_values: list) -> list | None:
    """A list column's cell as the JSON list the engine answers over HTTP, its values' types restored from the
    window's values they are the text of (a text no value of the window has stays text, tagged, so that it
    compares unequal)."""
    if cell is None:
        return None
    by_text = {list_element_text(v): v for v in window_values}

    def restore(text: str | None) -> Any:
        return None if text is None else by_text.get(text, ("not in the window", text))
    if aggregation == "top_k":
        return [{"value": restore(item["value"]), "count": item["count"]} for item in cell]
    return [restore(text) for text in cell]


# ---------------------------------------------------------------------------------------------------
# Entity rows and output
# ---------------------------------------------------------------------------------------------------


@dataclass
class EntityRows:
    header: list[str]
    rows: list[list[str]]  # the cells as read
    keys: list[tuple[str | tuple, int]]  # (entity, time ms) per row


def read_entity_rows(path: str, spec: Spec) -> EntityRows:
    with open(path, newline="", encoding="utf-8") as f:
        table = [row for row in csv.reader(f) if row]
    if not table:
        raise ReferenceError(f"{path}: no header row")
    header = table[0]
    key_fields = spec.key_fields or [spec.entity_field]
    for column in (*key_fields, spec.timestamp_field):
        if column not in header:
            raise ReferenceError(f"{path}: no column named {column!r}")
    key_cols, time_col = [header.index(f) for f in key_fields], header.index(spec.timestamp_field)
    rows, keys = [], []
    for number, row in enumerate(table[1:], start=2):
        if len(row) != len(header):
            raise ReferenceError(f"{path}:{number}: {len(row)} cells, expected {len(header)}")
        t = row_time_ms(row[time_col])
        if t is None:
            raise ReferenceError(f"{path}:{number}: bad timestamp {row[time_col]!r}")
        rows.append(row)
        keys.append((tuple(row[c] for c in key_cols) if spec.key_fields else row[key_cols[0]], t))
    return EntityRows(header, rows, keys)


def compute(spec: Spec, events: list[Event], entity_rows: EntityRows) -> list[list[Any]]:
    """One list of feature values (spec order) per entity row."""
    evaluator = Evaluator(spec, events)
    return [
        [evaluator.value(j, entity, t)[0] for j in range(len(spec.features))]
        for entity, t in entity_rows.keys
    ]


def format_value(value: Any) -> str:
    """A feature value as CSV text (before quoting)."""
    if value is None or value is MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):  # top_k, last_k: JSON text
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def quote_csv(cell: str) -> str:
    """RFC 4180: quote a cell holding a comma, quote, CR or LF; double the quotes inside."""
    if any(c in cell for c in ',"\r\n'):
        return '"' + cell.replace('"', '""') + '"'
    return cell


def write_output(path: str, spec: Spec, entity_rows: EntityRows, values: list[list[Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        header = entity_rows.header + [feature.name for feature in spec.features]
        f.write(",".join(quote_csv(c) for c in header) + "\n")
        for row, row_values in zip(entity_rows.rows, values):
            cells = row + [format_value(v) for v in row_values]
            f.write(",".join(quote_csv(c) for c in cells) + "\n")


# ---- Request-time features (issue 12): the `derive` language over an entity's feature values ----------------


def parse_request_features(doc: Any) -> list[tuple[str, tuple]]:
    """The spec's `request_features` as (name, parsed expression), in order (the same parser as `derive`)."""
    return [(str(r["name"]), _DeriveParser(str(r["expr"]), str(doc["timestamp"])).parse())
            for r in doc.get("request_features") or []]


def request_feature_values(parsed: list[tuple[str, tuple]], entity_field: str, entity: str, t: int,
                           feature_values: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Each request feature as of t: its expression over the feature values (by name), the earlier request
    features, `param.NAME` (the request's parameters; absent ones are null), the entity field (the entity key)
    and the timestamp field (t)."""
    record: dict[str, Any] = dict(feature_values)
    record["param"] = dict(params)
    record[entity_field] = entity
    out: dict[str, Any] = {}
    for name, node in parsed:
        out[name] = eval_derive(node, record, t)
        record[name] = out[name]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--entities", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--dead-letters")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        with open(args.events, "rb") as f:
            events, dead = read_events(f.read(), spec)
        entity_rows = read_entity_rows(args.entities, spec)
    except (ReferenceError, OSError, KeyError, TypeError, yaml.YAMLError) as e:
        print(f"reference: error: {e}", file=sys.stderr)
        return 2
    write_output(args.output, spec, entity_rows, compute(spec, events, entity_rows))
    if args.dead_letters:
        with open(args.dead_letters, "w", encoding="utf-8") as f:
            for d in dead:
                f.write(json.dumps({"line": d.line, "reason": d.reason}) + "\n")
    late = sum(1 for d in dead if d.reason == "late")
    duplicates = sum(1 for d in dead if d.reason == "duplicate")
    print(f"reference: {len(events)} events accepted, {len(dead) - late - duplicates} rejected, {late} late, "
          f"{duplicates} duplicates; "
          f"{len(entity_rows.rows)} rows x {len(spec.features)} features written to {args.output}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
