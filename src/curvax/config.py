"""The one config-file loader: YAML → a dataclass, with clear errors naming the file and key.

    cfg = load_config("configs/pft-nequix-mp.yaml", FinetuneConfig)

Rules, the same for every command (finetune, relax-tune, gk):
- the file must be a YAML mapping; unknown keys and missing required keys (dataclass fields
  without a default) are errors that list the known keys;
- values are checked against the field's annotation (int, float, bool, str, list/tuple, dict,
  and `X | None`), naming the key: `batch_size: 2.5` or `steps: "six"` stop here, before any
  model is loaded;
- **relative paths** in fields marked `path_field()` are relative to the config file's folder.
  A value counts as a path if it contains a '/' or has a file suffix (`data.json.gz`,
  `model.nqx`); model specs (`lj:...`, `morse:...`) and registered names (`nequix-mp-1`) are
  left as they are. Output folders (`workdir`, `output`) are relative to the current directory;
- afterwards the dataclass's `validate(where)` method, if it has one, checks values.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml


def path_field(**kwargs):
    """A dataclass field whose value(s) are file paths, resolved against the config's folder
    (`default=` / `default_factory=` as for `dataclasses.field`)."""
    return dataclasses.field(metadata={"path": True}, **kwargs)


def resolve_path(base: Path, value: str) -> str:
    """`value` relative to `base` if it is a relative path (module doc's rule), else unchanged."""
    value = str(value)
    if ":" in value.split("/")[0] or ("/" not in value and not Path(value).suffix):
        return value  # a model spec (lj:..., morse:...) or a registered name
    q = Path(value).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,),
          "list": (list, tuple), "tuple": (list, tuple), "dict": (dict,)}


def _check_type(where, key, annotation, value):
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in text.split("|")]
    if value is None:
        if "None" in parts:
            return
        raise ValueError(f"{where}: {key} must not be empty (null)")
    allowed = tuple(t for p in parts for t in _TYPES.get(p.split("[")[0], ()))
    if not allowed or any(p.split("[")[0] not in _TYPES and p != "None" for p in parts):
        return  # an annotation this checker does not know: leave it to validate()
    if isinstance(value, bool) and bool not in allowed:
        ok = False
    else:
        ok = isinstance(value, allowed)
    if not ok:
        want = " or ".join("true or false" if p == "bool" else p for p in parts if p != "None")
        raise ValueError(f"{where}: {key} must be {want}, got {value!r}")


def load_config(path, cls, overrides: dict | None = None):
    """Read the YAML file `path` into the dataclass `cls` (rules in the module doc).
    `overrides` (e.g. from command-line flags) replace file values before the checks."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    raw.update({k: v for k, v in (overrides or {}).items() if v is not None})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{path}: unknown config keys {unknown}; known: {sorted(fields)}")
    missing = [k for k, f in fields.items() if k not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{path}: missing required config keys {missing}")
    for key, value in raw.items():
        _check_type(path, key, fields[key].type, value)
        if fields[key].metadata.get("path") and isinstance(value, str):
            raw[key] = resolve_path(path.parent, value)
        elif fields[key].metadata.get("path") and isinstance(value, (list, tuple)):
            raw[key] = [resolve_path(path.parent, v) if isinstance(v, str) else v for v in value]
    cfg = cls(**raw)
    if hasattr(cfg, "validate"):
        cfg.validate(path)
    return cfg


def at_least(where, cfg, minimum, *names) -> None:
    """ValueError naming the first of `names` whose value in `cfg` is below `minimum`."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not value >= minimum:
            raise ValueError(f"{where}: {name} must be ≥ {minimum}, got {value!r}")


def one_of(where, name, value, allowed) -> None:
    """ValueError unless `value` is in `allowed`."""
    if value not in allowed:
        raise ValueError(f"{where}: {name} must be one of {list(allowed)}, got {value!r}")


def field_defaults(cls) -> dict:
    """{name: default} of the dataclass `cls`'s fields that have one, as a stored run record
    holds them (JSON types: lists, strings)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return json.loads(json.dumps(out, default=str))


def changed_settings(old: dict, new: dict, may_change=(), defaults: dict | None = None) -> list[str]:
    """"key: old → new" for every setting that differs between two run records (keys in
    `may_change` excepted): what stops a resumed run. A key missing from `old` (a record written
    before that setting existed) counts as its value in `defaults` (`field_defaults`), so adding
    a setting does not stop the runs made before it while they use its default."""
    defaults = defaults or {}

    def before(k):
        return old[k] if k in old else defaults.get(k)

    return [f"{k}: {before(k)!r} → {new.get(k)!r}" for k in sorted((set(old) | set(new)) - set(may_change))
            if before(k) != new.get(k)]
