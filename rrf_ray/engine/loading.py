"""Loading a sweep spec: a YAML file (by name or by path), `--set` overrides, validation by the model
of the experiment it names, and errors that name the field.

A name is looked up in `./sweeps/` (a user's own specs) and then among the specs shipped inside the
package (`rrf_ray/sweeps/`, found from any directory after a plain `pip install`). A spec may start
from another with `base: NAME` and state only what it changes: mappings merge key by key, lists and
values replace, and a key set to null is removed (as in Helm's values: `environments: {halfcheetah:
null, hopper: {...}}` swaps one environment for another; a removed field takes its default).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from rrf_ray.engine.registry import default_experiment, get_experiment
from rrf_ray.engine.spec import ConfigError

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"  # package data: rrf_ray/sweeps/*.yaml
BASE_KEY = "base"


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """`maze2d` -> `./sweeps/maze2d.yaml` if there is one, else the package's `rrf_ray/sweeps/maze2d.yaml`; a path is
    used as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"spec file {p} does not exist")
        return p
    for base in (Path.cwd() / "sweeps", SWEEPS_DIR):
        candidate = base / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    known = [name for name, _ in list_sweeps()]
    raise ConfigError(f"no sweep named {name_or_path!r} (looked in ./sweeps and {SWEEPS_DIR}); known: {', '.join(known)} "
                      "(python -m rrf_ray.sweep --list)")


def list_sweeps() -> list[tuple[str, str]]:
    """(name, summary: the first sentence of the YAML's header comment) of every spec in ./sweeps and the
    package; a spec in ./sweeps hides a shipped one of the same name, as it does when loading."""
    found: dict[str, str] = {}
    for base in (SWEEPS_DIR, Path.cwd() / "sweeps"):
        for path in sorted(base.glob("*.yaml")) if base.is_dir() else []:
            found[path.stem] = _summary(path.read_text())
    return sorted(found.items())


def _summary(text: str, limit: int = 110) -> str:
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    words = " ".join(header)
    end = re.search(r"\.(\s|$)", words)
    sentence = words[:end.start() + 1] if end else words
    return sentence if len(sentence) <= limit else sentence[:limit - 1].rstrip() + "…"


def _merge(base: dict, child: dict) -> dict:
    """`child` over `base`: mappings merge key by key; lists and values replace; null removes the key."""
    out = dict(base)
    for key, value in child.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def read_raw(path: Path, seen: tuple = ()) -> dict:
    """A spec file as a dict, its `base:` chain merged in (the base first, then this file's keys)."""
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise ConfigError(f"{path}: `base:` chain loops: {chain}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: must name one spec (a name or a path), got {base!r}")
    try:
        base_path = resolve_spec_path(base)
    except ConfigError as e:
        raise ConfigError(f"{path}: base: {e}") from None
    return _merge(read_raw(base_path, (*seen, path.resolve())), raw)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML, so lists and numbers work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {e}") from None
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a mapping")
            node = child
        node[path[-1]] = value
    return raw


def format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid sweep spec"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def spec_model(experiment: object) -> type[BaseModel]:
    """The pydantic model of an experiment's sweep spec (the YAML's `experiment` key)."""
    return get_experiment(experiment).spec_model


def spec_from_dict(raw: dict, source: str = "spec", overrides: list[str] | None = None):
    """Validate a raw spec (after `--set` overrides) with its experiment's model."""
    raw = apply_overrides(copy.deepcopy(raw), list(overrides or []))
    try:
        model = spec_model(raw.get("experiment", default_experiment()))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(source, e)) from None
    except ValueError as e:  # a spec model's own check outside a field (e.g. a maze layout)
        raise ConfigError(f"{source}: {e}") from None


def load_spec(name_or_path: str | Path | None = None, overrides: list[str] | None = None):
    """Load a sweep spec by name (resolve_spec_path) or path; None gives the default experiment's defaults."""
    if name_or_path is None:
        defaults = spec_model(default_experiment())().model_dump(mode="json")  # --set edits these, key by key
        return spec_from_dict(defaults, "defaults", overrides)
    path = resolve_spec_path(name_or_path)
    return spec_from_dict(read_raw(path), str(path), overrides)
