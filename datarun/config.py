"""Configuration: who the author is and which store to use.

A store is chosen, first match wins, by ``--store``, then ``DATARUN_STORE``, then the config
file (``DATARUN_CONFIG`` or ``~/.datarun/config.yaml``), then the embedded default
``~/.datarun/store``. With no configuration at all, everything works on that default.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from datarun.errors import LocalIOError, UsageError

ENV_STORE = "DATARUN_STORE"
ENV_BLOB_STORE = "DATARUN_BLOB_STORE"
ENV_CONFIG = "DATARUN_CONFIG"
ENV_CACHE = "DATARUN_CACHE_DIR"
ENV_HOME = "DATARUN_HOME"


def datarun_home() -> Path:
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".datarun")


def default_store_url() -> str:
    return f"file://{datarun_home() / 'store'}"


def config_path() -> Path:
    return Path(os.environ.get(ENV_CONFIG) or datarun_home() / "config.yaml")


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "datarun"


@dataclass
class Config:
    """What ``datarun config create`` writes. Secrets are never stored here, only references."""

    store: str = ""  # store URL for metadata and, unless blob_store is set, data
    blob_store: str = ""  # optional separate store for packs, as datamon's metadata/blob split
    name: str = ""  # author name recorded in bundles
    email: str = ""  # author email recorded in bundles
    credential: str = ""  # path to a credential file (cloud backends); never its content
    index: str = ""  # run index URL (sqlite:///path or postgresql://...); default: SQLite in the cache folder

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump({k: v for k, v in asdict(self).items() if v}, sort_keys=False)


def load_config(path: Path | None = None) -> Config:
    path = path or config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Config()
    except OSError as err:
        raise LocalIOError(f"cannot read config `{path}`: {err.strerror}") from None
    import yaml  # only when a config file exists: keeps CLI start-up fast

    try:
        raw: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UsageError(
            f"config `{path}` is not valid YAML: {err}; fix it or recreate it with `datarun config create`"
        ) from None
    if not isinstance(raw, dict):
        raise UsageError(f"config `{path}` must be a mapping; recreate it with `datarun config create`")
    known = set(Config.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"config `{path}` has unknown keys {unknown}; known keys are {sorted(known)}")
    return Config(**{k: str(v) for k, v in raw.items()})


def save_config(config: Config, path: Path | None = None) -> Path:
    path = path or config_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(config.to_yaml())
        tmp.replace(path)
    except OSError as err:
        raise LocalIOError(f"cannot write config `{path}`: {err.strerror}") from None
    return path


@dataclass(frozen=True)
class StoreChoice:
    url: str
    blob_url: str
    source: str  # which rule chose it: flag, env, config or default


def choose_store(flag: str | None, config: Config) -> StoreChoice:
    blob = os.environ.get(ENV_BLOB_STORE) or config.blob_store
    if flag:
        return StoreChoice(flag, blob or flag, "--store")
    env = os.environ.get(ENV_STORE)
    if env:
        return StoreChoice(env, blob or env, ENV_STORE)
    if config.store:
        return StoreChoice(config.store, blob or config.store, f"config {config_path()}")
    default = default_store_url()
    return StoreChoice(default, blob or default, "default")


def default_author(config: Config) -> tuple[str, str]:
    name = config.name or os.environ.get("DATARUN_AUTHOR_NAME", "")
    email = config.email or os.environ.get("DATARUN_AUTHOR_EMAIL", "")
    if not name:
        try:
            import getpass  # brings termios: only when the environment names no user

            name = getpass.getuser()
        except (KeyError, OSError):
            name = "unknown"
    return name, email


def hostname() -> str:
    return os.uname().nodename
