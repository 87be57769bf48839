"""A run's settings, declared once: name, default, valid values and help, side by side.

An experiment lists its settings as `Setting`s; everything else derives from that one
list, as in Flax's examples and big_vision: `defaults` builds the
`ml_collections.ConfigDict` that `train_and_evaluate(config, workdir)` takes whole (and
that the command line overrides field by field, `--config.learning_rate=0.1`), a
preset is a mapping of fields over those defaults (`preset`), `check` refuses a value
outside its declared range before any work is done, and the saved `config.json` is the
ConfigDict as a dict. Nothing else keeps a list of setting names.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ml_collections import ConfigDict, config_dict

from lib.core.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: low and high bounds, each closed unless
    said open. NaN and infinities are never in range; None (a setting left to its
    default) always is."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: Any) -> bool:
        if value is None:
            return True
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or (value < self.high if self.open_high else value <= self.high)

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return "any finite number"
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.open_high else '<='} {self.high:g}"
        left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


@dataclasses.dataclass(frozen=True)
class OneOf:
    """A setting that names one of a few choices."""

    choices: tuple[str, ...]

    def __contains__(self, value: Any) -> bool:
        return value is None or value in self.choices

    def __str__(self) -> str:
        return f"one of {', '.join(map(str, self.choices))}"


AT_LEAST_1 = Range(1)
POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, open_high=True)  # a rate or a momentum: 0 allowed, 1 not


@dataclasses.dataclass(frozen=True)
class Setting:
    """One field of a config: its default, the values it may take and what it means.

    A default of None needs `kind` (int, float or str), the type an override parses to.
    A tuple default is a list setting; `valid` then applies to each of its values.
    """

    name: str
    default: Any
    help: str = ""
    valid: Range | OneOf | None = None
    kind: type | None = None

    def __post_init__(self):
        if self.default is None and self.kind is None:
            raise TypeError(f"setting {self.name!r} defaults to None; give its kind")


def defaults(settings: Iterable[Setting]) -> ConfigDict:
    """The ConfigDict of every setting at its default (None ones typed, so overrides parse)."""
    config = ConfigDict()
    for s in settings:
        config[s.name] = config_dict.placeholder(s.kind) if s.default is None else s.default
    return config


def preset(settings: Iterable[Setting], values: Mapping[str, Any]) -> ConfigDict:
    """The defaults with `values` over them; a name that is no setting is a ConfigError."""
    config = defaults(settings)
    override(config, values)
    return config


def override(config: ConfigDict, values: Mapping[str, Any]) -> ConfigDict:
    """Set fields of `config` in place (and return it); an unknown name is a ConfigError
    that lists the known ones, and so is a value of the wrong type for its field."""
    unknown = sorted(set(values) - set(config))
    if unknown:
        raise ConfigError(
            f"unknown setting {', '.join(unknown)}; the settings are {', '.join(sorted(config))}"
        )
    for name, value in values.items():
        try:
            config[name] = tuple(value) if isinstance(value, list) else value
        except TypeError as e:
            raise ConfigError(str(e)) from None
    return config


def given(overrides: Mapping[str, Any], empty_lists_unset: bool = False) -> dict[str, Any]:
    """The settings of `overrides` that are set: not None (and, with `empty_lists_unset`,
    not an empty list), for a preset's or the defaults' values to stand for the rest."""
    return {
        k: v
        for k, v in overrides.items()
        if v is not None and not (empty_lists_unset and isinstance(v, (list, tuple)) and not v)
    }


def resolve(
    config: ConfigDict,
    overrides: Mapping[str, Any],
    settings: Iterable[Setting],
    empty_lists_unset: bool = False,
) -> ConfigDict:
    """`config` (the defaults, or a preset) with the given `overrides` over it (`given`),
    checked against the settings' declared values, named as command-line flags: a
    ConfigError names each bad one."""
    override(config, given(overrides, empty_lists_unset))
    check(config, settings, prefix="--")
    return config


def check(
    config: Mapping[str, Any], settings: Iterable[Setting], prefix: str = "--config."
) -> None:
    """ConfigError naming every field of `config` outside its declared values (a list's
    values one by one), for a run to call before it does any work or writes any file."""
    check_values(config, {s.name: s.valid for s in settings if s.valid is not None}, prefix)


def check_values(
    config: Mapping[str, Any], valid: Mapping[str, Range | OneOf], prefix: str
) -> None:
    """ConfigError naming, as `<prefix><name>=<value> must be ...`, every value of `config`
    outside `valid[name]`; a missing value counts as None, which every range admits."""
    bad = []
    for name, allowed in valid.items():
        value = config.get(name)
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values or any(v not in allowed for v in values):
            shown = ",".join(map(str, values)) if isinstance(value, (list, tuple)) else value
            bad.append(f"{prefix}{name}={shown} must be {allowed}")
    if bad:
        raise ConfigError("; ".join(bad))


def as_dict(config: ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of the config (lists for tuples), as config.json stores it."""
    plain = config.to_dict() if isinstance(config, ConfigDict) else dict(config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in plain.items()}
