"""The search space of a study: which config keys vary, over which values, and how points are chosen.

A space file (YAML)::

    sampler: grid            # grid (every combination) | tpe | random
    points: 20               # tpe / random: how many points to sample (each one is trained with every seed)
    metric: miou             # the key of metrics.json to maximise: miou (final model) or best_miou
    params:                  # any config key, as in a key=value override (grid: may be empty, {}, for a
                             # study of the base config over seeds only, e.g. one row of a comparison)
      train.optimizer.lr: [0.005, 0.01, 0.02]                    # grid: the values
      train.optimizer.weight_decay: {low: 1.0e-5, high: 1.0e-3, log: true}   # tpe / random: a range
      losses.0.params.tau: {choices: [1, 2, 4]}                  # tpe / random: a set
    fixed:                   # overrides of every trial of this space
      train.iterations: 200

Values are rendered as ``key=value`` overrides of the base config, so every key and value is checked by
the config's own validation (once per value, before the first trial starts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segdistill.config import load_config
from segdistill.errors import ConfigError

SAMPLERS = ("grid", "tpe", "random")
SCALAR = (str, int, float, bool, type(None))


@dataclass
class SearchSpace:
    sampler: str = "grid"
    points: int | None = None
    metric: str = "miou"
    params: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)

    def fixed_overrides(self) -> list[str]:
        return [override(key, value) for key, value in self.fixed.items()]

    def grid(self) -> dict[str, list]:
        """Every grid value of every key (sampler ``grid`` only)."""
        return {key: list(values) for key, values in self.params.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler, "points": self.points, "metric": self.metric, "params": self.params, "fixed": self.fixed}


def render(value: Any) -> str:
    """A value as the right-hand side of a key=value override (parsed back as YAML by the config)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(render(v) for v in value) + "]"
    return str(value)


def override(key: str, value: Any) -> str:
    return f"{key}={render(value)}"


def short(key: str) -> str:
    """``train.optimizer.lr`` -> ``lr``; ``losses.1.weight`` stays whole (the index says which loss)."""
    parts = key.split(".")
    return key if parts[0] == "losses" else parts[-1]


def shown(value: Any) -> str:
    """A value for people: floats to 4 significant digits (sampled ones are long)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_params(params: dict[str, Any]) -> str:
    """``lr=0.01, weight_decay=0.0001``: a point, for people."""
    return ", ".join(f"{short(k)}={shown(v)}" for k, v in params.items()) or "-"


def _check_param(source: str, key: str, spec: Any, sampler: str) -> None:
    where = f"space file {source!r}, params.{key}"
    if sampler == "grid":
        if not isinstance(spec, list) or not spec:
            raise ConfigError(f"{where}: a grid needs a non-empty list of values, got {spec!r}")
        for value in spec:
            if not isinstance(value, SCALAR) or (isinstance(value, float) and math.isnan(value)):
                raise ConfigError(
                    f"{where}: grid values must be numbers, strings, booleans or null, got {value!r} "
                    "(write a list value as a string, e.g. '[64, 64]')"
                )
        return
    is_range = isinstance(spec, dict) and {"low", "high"} <= set(spec) <= {"low", "high", "log", "step"}
    is_choices = isinstance(spec, dict) and set(spec) == {"choices"}
    if not (is_range or is_choices):
        raise ConfigError(f"{where}: {sampler} needs {{low, high[, log][, step]}} or {{choices: [...]}}, got {spec!r}")
    if "choices" in spec and (not isinstance(spec["choices"], list) or not spec["choices"]):
        raise ConfigError(f"{where}: choices must be a non-empty list, got {spec['choices']!r}")
    if "low" in spec and not spec["low"] < spec["high"]:
        raise ConfigError(f"{where}: low must be below high, got {spec!r}")


def parse_space(values: dict, source: str) -> SearchSpace:
    allowed = {"sampler", "points", "metric", "params", "fixed"}
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ConfigError(f"space file {source!r}: unknown keys {unknown}; valid keys: {', '.join(sorted(allowed))}")
    space = SearchSpace(**values)
    if space.sampler not in SAMPLERS:
        raise ConfigError(f"space file {source!r}: sampler {space.sampler!r} is not one of {', '.join(SAMPLERS)}")
    if space.metric not in ("miou", "best_miou", "pixel_accuracy"):
        raise ConfigError(f"space file {source!r}: metric {space.metric!r} is not one of miou, best_miou, pixel_accuracy")
    if not isinstance(space.params, dict) or (not space.params and space.sampler != "grid"):
        raise ConfigError(f"space file {source!r}: 'params' must map config keys to their values")
    if "seed" in space.params:
        raise ConfigError(f"space file {source!r}: 'seed' is not a parameter; give the number of seeds with --seeds")
    if not isinstance(space.fixed, dict):
        raise ConfigError(f"space file {source!r}: 'fixed' must map config keys to values")
    for key, spec in space.params.items():
        _check_param(source, key, spec, space.sampler)
    if space.sampler != "grid" and not (isinstance(space.points, int) and space.points > 0):
        raise ConfigError(f"space file {source!r}: sampler {space.sampler!r} needs 'points', the number of points to sample")
    return space


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"space file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"space file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"space file {str(path)!r} must contain a mapping")
    return parse_space(values, str(path))


def check_against_config(space: SearchSpace, config: str | None, overrides: list[str]) -> None:
    """Load the base config with every value of every parameter once, so that a typo in a key or a value
    of the wrong type stops the study before its first trial (ConfigError naming the key)."""
    load_config(config, overrides)
    for key, spec in space.params.items():
        if isinstance(spec, list):
            values = spec
        elif "choices" in spec:
            values = spec["choices"]
        else:
            values = [spec["low"], spec["high"]]
        for value in values:
            load_config(config, [*overrides, override(key, value)])
