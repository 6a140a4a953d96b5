"""Loading a configuration: the schema's defaults, then a YAML file, then ``key=value``
overrides (OmegaConf's dotlist syntax, ``prior.mean_sources=0.2``), then the rules of
:mod:`hpc_bliss.config.checks`.

An unknown key, a wrong type, or a value that breaks a rule fails at load time with a one-line
:class:`~hpc_bliss.errors.ConfigError` naming the key, what was expected, and where the value
came from: the override that set it, else the file, else the defaults.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpc_bliss.config.checks import Invalid, check_all
from hpc_bliss.config.schema import Config
from hpc_bliss.errors import ConfigError


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = (getattr(err, "msg", None) or str(err)).strip().splitlines()[0]
    return f"key '{key}': {msg}" if key else msg


def _layers(path: Path | None, overrides: list[str]) -> list[tuple[str, Any]]:
    """(origin, DictConfig) of the file and of the overrides, each parsed alone."""
    layers: list[tuple[str, Any]] = []
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            layers.append((str(path), OmegaConf.load(path)))
        except Exception as err:  # YAML syntax errors come in several classes
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        try:
            layers.append(("command-line overrides", OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as err:
            raise ConfigError(f"command-line overrides: {_describe(err)}") from err
    return layers


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (YAML) over the schema defaults, apply ``key=value`` overrides, validate;
    returns plain :class:`Config` dataclass instances with every interpolation resolved."""
    path = Path(path) if path is not None else None
    overrides = list(overrides or [])
    layers = _layers(path, overrides)
    cfg = OmegaConf.structured(Config)
    for origin, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as err:
            raise ConfigError(f"{origin}: {_describe(err)}") from err
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path or 'defaults'}: {_describe(err)}") from err
    validate(cfg, origin=_origin_finder(path, layers, overrides))
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    return obj


def _origin_finder(
    path: Path | None, layers: list[tuple[str, Any]], overrides: list[str]
) -> Callable[[str, str], str]:
    """(key, expectation) → where the value came from: the command-line override that set it
    (or a section holding it, or a key the expectation names), else the YAML file, else the
    schema defaults."""

    def related(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    def origin(key: str, expected: str = "") -> str:
        for item in reversed(overrides):
            name = item.split("=", 1)[0].lstrip("+~")
            if related(name, key) or (name and f"{name}=" in expected):
                return f"command-line override {item!r}"
        if path is not None and OmegaConf.select(layers[0][1], key) is not None:
            return str(path)
        return f"{path}: the default" if path is not None else "defaults"

    return origin


def validate(cfg: Config | DictConfig, origin: str | Callable[[str, str], str] = "config") -> None:
    """Check what types alone cannot (:mod:`hpc_bliss.config.checks`); ``origin`` names where
    a value came from: a string, or a function of (key, expectation)."""
    try:
        check_all(cfg)
    except Invalid as bad:
        where = origin(bad.key, bad.expected) if callable(origin) else origin
        raise ConfigError(f"{where}: {bad}") from None


def to_yaml(cfg: Config | DictConfig) -> str:
    """The resolved config as YAML (what shards record)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg), resolve=True)


#: the generate keys that, with seed, prior and render, determine simulated shards (on CPU the
#: thread count too: matrix products and reductions split their sums by thread)
DATA_GENERATE_KEYS = ("n_shards", "images_per_shard", "batch_size", "split", "cpu_threads")


def config_hash(cfg: Config | DictConfig) -> str:
    """SHA-256 (first 16 hex digits) of everything that determines simulated data: seed,
    prior, render and generate's n_shards, images_per_shard, batch_size, split, cpu_threads."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    subset = {k: container[k] for k in ("seed", "prior", "render")}
    subset["generate"] = {k: container["generate"][k] for k in DATA_GENERATE_KEYS}
    text = OmegaConf.to_yaml(OmegaConf.create(subset))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
