"""Settings declared once per field, read from keywords, the environment and ``.env``, checked.

A settings class annotates each field and assigns it :func:`setting` (default, bounds, rule,
description, secrecy). The annotation picks the parser: ``str``, ``int``, ``float``, ``bool``,
``X | None``, ``list[str]`` or a ``Literal`` of strings, read as pydantic's lax mode read them
(bools from 1/0/true/false/yes/no/on/off, numbers from text, lists as JSON in the environment).
This replaces pydantic-settings, whose import alone cost every worker ~14.5 MB of RSS
(issue 19). Errors name the variable and the rule, never the value: it may hold a password.
"""

from __future__ import annotations

import json
import operator
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import FrozenInstanceError, dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from pgcelery import variables
from pgcelery.exceptions import ConfigurationError

T = TypeVar("T")
#: Parses one raw value; ``text`` is true when it comes from the environment or ``.env``.
Parser = Callable[[Any, bool], Any]


class Invalid(ValueError):
    """A value breaks its field's rule; the message states the rule, never the value."""


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


def _unbound(value: object, text: bool) -> object:
    raise TypeError("a setting is parsed only once its class has read its annotation")


@dataclass(frozen=True)
class Field:
    """One setting: its variable, its default, its rule and what it means."""

    default: Any = REQUIRED
    default_factory: Callable[[], Any] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    #: Further rule on the parsed value: raises ValueError stating it.
    check: Callable[[Any], object] | None = None
    description: str = ""
    #: Left out of ``repr`` (a password or a key).
    secret: bool = False
    #: The environment variable; empty: ``PGCELERY_`` + the upper-case name.
    env: str = ""
    #: What the error says after the variable's name when no source sets a required field.
    missing: str = "is required"
    name: str = ""
    parse: Parser = field(default=_unbound, repr=False)

    @property
    def required(self) -> bool:
        return self.default is REQUIRED and self.default_factory is None

    def default_value(self) -> Any:
        """The default (a fresh one from ``default_factory``); KeyError for a required field."""
        if self.default_factory is not None:
            return self.default_factory()
        if self.required:
            raise KeyError(f"{self.env} has no default")
        return self.default

    def value(self, raw: object, text: bool) -> Any:
        """``raw`` parsed, within bounds and checked; :class:`ValueError` stating the rule."""
        value = self.parse(raw, text)
        if isinstance(value, int | float) and not isinstance(value, bool):
            for bound, holds, words in (
                (self.le, operator.le, "less than or equal to"),
                (self.ge, operator.ge, "greater than or equal to"),
                (self.gt, operator.gt, "greater than"),
            ):
                # "not holds": NaN fails every bound.
                if bound is not None and not holds(value, bound):
                    raise Invalid(f"must be {words} {bound}")
        if self.check is not None:
            self.check(value)
        return value

    def read(self, given: Mapping[str, Any], *sources: Mapping[str, str]) -> Any:
        """The value from keywords, else the first text source with the variable, else the
        default."""
        if self.name in given:
            return self.value(given[self.name], text=False)
        for source in sources:
            if self.env in source:
                return self.value(source[self.env], text=True)
        if self.required:
            raise Invalid(self.missing)
        return self.default_value()


def setting(
    default: T = REQUIRED,
    *,
    default_factory: Callable[[], T] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    check: Callable[[Any], object] | None = None,
    description: str = "",
    secret: bool = False,
    env: str = "",
    missing: str = "is required",
) -> T:
    """Declare a field: ``name: type = setting(default, ...)`` in a :class:`EnvSettings` class."""
    spec = Field(
        default=default,
        default_factory=default_factory,
        ge=ge,
        gt=gt,
        le=le,
        check=check,
        description=description,
        secret=secret,
        env=env,
        missing=missing,
    )
    return spec  # type: ignore[return-value]  # replaced by the class, as dataclasses' field()


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _bool(value: object, text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise Invalid("must be true or false (also 1/0, yes/no, on/off)")


def _int(value: object, text: bool) -> int:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        whole, _, fraction = value.strip().partition(".")
        if not fraction.strip("0"):  # "5.0" is 5, as pydantic read it
            try:
                return int(whole)
            except ValueError:
                pass
    raise Invalid("must be a whole number")


def _float(value: object, text: bool) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise Invalid("must be a number")


def _str(value: object, text: bool) -> str:
    if isinstance(value, str):
        return value
    raise Invalid("must be a string")


def _strings(value: object, text: bool) -> list[str]:
    rule = (
        'must be a JSON list of strings, like ["a", "b"]' if text else "must be a list of strings"
    )
    if text:
        try:
            value = json.loads(str(value))
        except ValueError:
            raise Invalid(rule) from None
    if isinstance(value, list | tuple | set | frozenset) and all(isinstance(v, str) for v in value):
        return list(value)
    raise Invalid(rule)


def _choice(choices: tuple[str, ...]) -> Parser:
    *first, last = (repr(c) for c in choices)
    rule = f"must be {', '.join(first)} or {last}" if first else f"must be {last}"

    def parse(value: object, text: bool) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise Invalid(rule)

    return parse


def _optional(parse: Parser) -> Parser:
    return lambda value, text: None if value is None else parse(value, text)


_SIMPLE: dict[object, Parser] = {bool: _bool, int: _int, float: _float, str: _str}


def parser(annotation: object) -> Parser:
    """The parser of a field annotated ``annotation``; TypeError for a type no setting has."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation in _SIMPLE:
        return _SIMPLE[annotation]
    if origin is Literal and all(isinstance(a, str) for a in args):
        return _choice(args)
    if origin in (Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return _optional(parser(next(a for a in args if a is not type(None))))
    if origin is list and args == (str,):
        return _strings
    raise TypeError(f"no settings parser for {annotation!r}")


def _upper(source: Mapping[str, str]) -> dict[str, str]:
    return {key.upper(): value for key, value in source.items()}


class EnvSettings:
    """Frozen settings whose fields are read from keywords, then the environment, then
    ``.env`` (``_env_file=``: another file, or ``None`` for none), then their defaults."""

    #: Every field of the class, in declaration order.
    FIELDS: ClassVar[Mapping[str, Field]] = MappingProxyType({})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = dict(cls.FIELDS)
        for name, annotation in get_type_hints(cls).items():
            spec = cls.__dict__.get(name)
            if isinstance(spec, Field):
                env = spec.env or variables.PREFIX + name.upper()
                fields[name] = replace(spec, name=name, env=env, parse=parser(annotation))
                delattr(cls, name)  # instances hold the values
        cls.FIELDS = MappingProxyType(fields)

    def __init__(self, **values: Any) -> None:
        env_file = values.pop("_env_file", variables.DOTENV)
        given = self._named(values)
        environ = _upper(os.environ)
        dotenv = _upper(variables.dotenv_values(str(env_file))) if env_file is not None else {}
        problems = []
        for spec in self.FIELDS.values():
            try:
                object.__setattr__(self, spec.name, spec.read(given, environ, dotenv))
            except ValueError as exc:
                # ConfigurationError is a ValueError: a check may raise it with the variable.
                message = str(exc)
                problems.append(message if spec.env in message else f"{spec.env} {message}")
        if not problems:
            try:
                self._check()
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigurationError("Invalid configuration: " + "; ".join(problems))

    @classmethod
    def _named(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Keywords by field name: ``PGCELERY_X=`` (any case) and each field's variable set
        the field too, as they would in the environment."""
        by_variable = {spec.env: name for name, spec in cls.FIELDS.items()}
        named: dict[str, Any] = {}
        for key, value in values.items():
            upper = key.upper()
            if upper in by_variable:
                key = by_variable[upper]
            elif upper.startswith(variables.PREFIX):
                key = upper.removeprefix(variables.PREFIX).lower()
            named[key] = value
        unknown = sorted(key for key in named if key not in cls.FIELDS)
        if unknown:
            raise ConfigurationError(f"Unknown pgcelery setting(s): {', '.join(unknown)}")
        return named

    def _check(self) -> None:
        """Rules across fields, once each field is valid: raise ValueError stating the rule."""

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.FIELDS)

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to {name!r}: settings are frozen")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete {name!r}: settings are frozen")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EnvSettings):
            return NotImplemented
        return type(self) is type(other) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(tuple(tuple(v) if isinstance(v, list) else v for v in self._values()))

    def __repr__(self) -> str:
        shown = (f"{n}={getattr(self, n)!r}" for n, f in self.FIELDS.items() if not f.secret)
        return f"{type(self).__name__}({', '.join(shown)})"
