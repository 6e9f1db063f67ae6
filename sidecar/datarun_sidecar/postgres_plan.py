"""The postgres sidecar's configuration: datamon's ``dm_pg_opts`` / ``dm_pg_db_<id>`` env vars, or
the same settings as a YAML file (sidecar/PROTOCOL.md).

``dm_pg_opts``: ``c`` coord dir, ``V`` ignore version mismatch, ``S`` sleep instead of exiting.
``dm_pg_db_<id>``, one per database: ``p`` port, ``r`` repo, ``l`` label, ``m`` message,
``sr``/``sl``/``sb`` source repo/label/bundle. The operator writes them
(``datarun_operator.wire.postgres_env``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from datarun_sidecar.protocol import SidecarError
from datarun_sidecar.serialmap import SerialMapError, parse_serialized_map


class PostgresSidecarError(SidecarError):
    """Bad configuration, or a server, dump or restore that failed; the message names the database."""


@dataclass
class DatabaseSpec:
    id: str
    port: int
    repo: str = ""
    label: str = ""
    message: str = ""
    source_repo: str = ""
    source_label: str = ""
    source_bundle: str = ""


@dataclass
class PostgresPlan:
    coord: Path
    ignore_version: bool
    sleep_after: bool
    databases: list[DatabaseSpec]


def plan_from_env(env: Mapping[str, str]) -> PostgresPlan:
    if "dm_pg_opts" not in env:
        raise PostgresSidecarError(
            "dm_pg_opts is not set; it needs at least the coordination folder, e.g. ';:c:/coord'"
        )
    try:
        opts = parse_serialized_map(env["dm_pg_opts"], name="dm_pg_opts")
        if "c" not in opts or opts["c"] is True:
            raise PostgresSidecarError("dm_pg_opts: `c` (the coordination folder) is required")
        databases = []
        for key in sorted(k for k in env if k.startswith("dm_pg_db_")):
            raw = parse_serialized_map(env[key], name=key)
            db_id = key[len("dm_pg_db_") :]
            port = raw.get("p")
            if not isinstance(port, str) or not port.isdigit():
                raise PostgresSidecarError(f"{key}: `p` (the port) must be a number")
            if bool(raw.get("sl")) and bool(raw.get("sb")):
                raise PostgresSidecarError(f"{key}: give at most one of `sl` (source label) and `sb` (source bundle)")
            databases.append(
                DatabaseSpec(
                    db_id,
                    int(port),
                    str(raw.get("r", "")),
                    str(raw.get("l", "")),
                    str(raw.get("m", f"database {db_id}")),
                    str(raw.get("sr", raw.get("r", ""))),
                    str(raw.get("sl", "")),
                    str(raw.get("sb", "")),
                )
            )
    except SerialMapError as err:
        raise PostgresSidecarError(str(err)) from None
    if not databases:
        raise PostgresSidecarError("no dm_pg_db_<id> variables: nothing to serve")
    return PostgresPlan(
        Path(str(opts["c"])), str(opts.get("V", "false")).lower() == "true", opts.get("S") is True, databases
    )


def plan_from_yaml(path: Path) -> PostgresPlan:
    """The same settings as the env vars, as a YAML file (see sidecar/PROTOCOL.md):

    coord: /coord               # c
    ignoreVersionMismatch: false  # V
    sleepAfter: false           # S
    databases:
      - id: main
        port: 5432              # p
        repo: db                # r
        label: latest           # l
        message: nightly state  # m
        source: {repo: db, label: latest}   # sr + sl, or {repo, bundle}: sr + sb
    """
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise PostgresSidecarError(f"config `{path}`: {err}") from None
    if not isinstance(raw, dict) or "coord" not in raw or not raw.get("databases"):
        raise PostgresSidecarError(f"config `{path}`: needs `coord` and a non-empty `databases` list")
    databases = []
    for index, db in enumerate(raw["databases"]):
        where = f"config `{path}`: databases[{index}]"
        if not isinstance(db, dict) or "id" not in db or not isinstance(db.get("port"), int):
            raise PostgresSidecarError(f"{where}: needs `id` and an integer `port`")
        source = db.get("source") or {}
        if source.get("label") and source.get("bundle"):
            raise PostgresSidecarError(f"{where}: source takes `label` or `bundle`, not both")
        databases.append(
            DatabaseSpec(
                str(db["id"]),
                db["port"],
                str(db.get("repo", "")),
                str(db.get("label", "")),
                str(db.get("message", f"database {db['id']}")),
                str(source.get("repo", db.get("repo", ""))),
                str(source.get("label", "")),
                str(source.get("bundle", "")),
            )
        )
    return PostgresPlan(
        Path(str(raw["coord"])),
        bool(raw.get("ignoreVersionMismatch", False)),
        bool(raw.get("sleepAfter", False)),
        databases,
    )
