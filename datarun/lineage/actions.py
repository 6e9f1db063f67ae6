"""Invalidation actions: what runs when a cascade reaches a repo's bundles or a record.

An action is a create-only record ``lineage/actions/<action-id>.json``. When an invalidation's
cascade has written its marks, each action whose target it reached runs once for that event and
its outcome is recorded create-only in ``lineage/executions/<event-id>/<action-id>.json``; a
resumed cascade runs only the actions without an execution record. A failing action is recorded
as failed and the cascade goes on.

* ``move-label``: each label of the repo (or the one named) that points at an invalid bundle is
  moved, with compare-and-swap, to the newest bundle of the repo that is valid;
* ``webhook``: POST a JSON document to a URL, retried with backoff a bounded number of times;
* ``rerun``: the runs that wrote the reached bundles (or the reached record's parents) are to be
  run again. Only the operator can create DataRuns, so the execution is recorded as pending for
  it, with the run ids; the operator records each rerun's outcome create-only in
  ``lineage/reruns/<run-id>/<event-id>.<action-id>.json`` (:func:`rerun_outcome_key`).
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Set
from dataclasses import dataclass
from typing import Any

from datarun.errors import ConflictError, DatarunError, PreconditionFailed, UsageError
from datarun.ids import new_ksuid
from datarun.layout import LINEAGE_ACTIONS_PREFIX, LINEAGE_EXECUTIONS_PREFIX, LINEAGE_RERUNS_PREFIX
from datarun.lineage.graph import Graph
from datarun.lineage.layout import FORMAT, dumps, loads, now, parse_node_key
from datarun.repo import Client

ACTIONS = LINEAGE_ACTIONS_PREFIX
EXECUTIONS = LINEAGE_EXECUTIONS_PREFIX
RERUNS = LINEAGE_RERUNS_PREFIX
KINDS = ("move-label", "webhook", "rerun")
PENDING_OPERATOR = "operator"  # an execution's `pending`: the operator finishes it


@dataclass(frozen=True, slots=True)
class Outcome:
    action: str
    ok: bool
    detail: str
    attempts: int


def add_action(
    client: Client,
    *,
    on: str,
    do: str,
    label: str | None = None,
    url: str | None = None,
    retries: int = 3,
    author: str = "",
) -> dict[str, Any]:
    key, eq, value = on.partition("=")
    if not eq or key not in ("repo", "record") or not value:
        raise UsageError(f"--on `{on}`: write repo=NAME or record=ID")
    if do not in KINDS:
        raise UsageError(f"--do `{do}`: choose one of {', '.join(KINDS)}")
    if key == "repo":
        client.get_repo(value)
    if do == "webhook" and not (url or "").startswith(("http://", "https://")):
        raise UsageError("--do webhook needs --url http(s)://...")
    if do == "move-label" and key != "repo":
        raise UsageError("--do move-label acts on a repo's labels: use --on repo=NAME")
    doc = {
        "format": FORMAT,
        "id": new_ksuid(),
        "on": {key: value},
        "do": do,
        "label": label,
        "url": url,
        "retries": retries,
        "created": now(),
        "author": author,
    }
    client.meta.put_if_absent(f"{ACTIONS}{doc['id']}.json", dumps(doc))
    return doc


def list_actions(client: Client) -> list[dict[str, Any]]:
    return [loads(i.key, client.meta.read(i.key)[0]) for i in client.meta.list(ACTIONS)]


def _reached(action: dict[str, Any], nodes: list[str]) -> list[str]:
    on = action["on"]
    if "repo" in on:
        return [n for n in nodes if n.startswith(f"bundle/{on['repo']}/")]
    return [n for n in nodes if n == f"record/{on['record']}"]


def _move_labels(client: Client, graph: Graph, action: dict[str, Any]) -> str:
    repo = action["on"]["repo"]
    # Newest first by creation time (microseconds); a KSUID alone orders only to the second.
    bundles = [b.id for b in sorted(client.list_bundles(repo), key=lambda b: (b.created, b.id), reverse=True)]
    bad = graph.invalid_reasons([f"bundle/{repo}/{b}" for b in bundles])
    valid = [b for b in bundles if f"bundle/{repo}/{b}" not in bad]
    moved = []
    for lbl in client.list_labels(repo):
        if action.get("label") and lbl.name != action["label"]:
            continue
        if f"bundle/{repo}/{lbl.bundle}" not in bad:
            continue
        if not valid:
            raise ConflictError(f"repo `{repo}` has no valid bundle to move label `{lbl.name}` to")
        client.set_label(repo, lbl.name, valid[0], expect=lbl.bundle)
        moved.append(f"{lbl.name}: {lbl.bundle} -> {valid[0]}")
    return "; ".join(moved) or "no label pointed at an invalid bundle"


def _producers(graph: Graph, hit: list[str]) -> list[str]:
    """Ids of the runs that made the reached nodes: the writer of a bundle; for a record, the runs
    among its parents and the writers of its parent bundles."""
    runs: list[str] = []
    for key in hit:
        node = parse_node_key(key)
        walk = graph.walk(node, "ancestors", depth=1 if node.type == "bundle" else 2, kinds=("run",))
        runs += [n.id for n in walk.nodes if n.type == "run" and n.id not in runs]
    return runs


def post_json(url: str, body: bytes, retries: int, timeout: float = 5.0) -> tuple[bool, str, int]:
    """POST ``body`` with bounded retries and backoff: (delivered, detail, attempts)."""
    attempts = 0
    delay = 0.2
    last = ""
    while attempts <= max(0, retries):
        attempts += 1
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})  # noqa: S310 - http(s) only, checked by add_action
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's own URL
                return True, f"HTTP {response.status}", attempts
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code}"
        except (urllib.error.URLError, OSError) as err:
            last = str(getattr(err, "reason", err))
        if attempts <= retries:
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    return False, f"gave up after {attempts} attempt(s): {last}", attempts


def run_actions(client: Client, graph: Graph, event: dict[str, Any], nodes: list[str]) -> list[Outcome]:
    """Run, once per event, every action the cascade reached; record each outcome."""
    outcomes = []
    for action in list_actions(client):
        hit = _reached(action, nodes)
        if not hit:
            continue
        key = f"{EXECUTIONS}{event['id']}/{action['id']}.json"
        with contextlib.suppress(DatarunError):
            client.meta.head(key)
            continue  # ran already (this is a resumed cascade)
        attempts = 1
        extra: dict[str, Any] = {}
        try:
            if action["do"] == "move-label":
                ok, detail = True, _move_labels(client, graph, action)
            elif action["do"] == "rerun":
                runs = _producers(graph, hit)
                extra = {"pending": PENDING_OPERATOR if runs else None, "runs": runs}
                ok = True
                detail = (
                    f"pending for the operator: rerun {', '.join(runs)}"
                    if runs
                    else "no run wrote the reached nodes: nothing to rerun"
                )
            else:
                body = dumps(
                    {
                        "type": "datarun.invalidation",
                        "event": event,
                        "action": action["id"],
                        "nodes": hit,
                        "count": len(hit),
                    }
                )
                ok, detail, attempts = post_json(str(action["url"]), body, int(action.get("retries", 3)))
        except DatarunError as err:
            ok, detail = False, str(err)
        record = {"format": FORMAT, "event": event["id"], "action": action["id"], "do": action["do"]}
        record |= {"ok": ok, "detail": detail, "attempts": attempts, "nodes": len(hit), "when": now(), **extra}
        with contextlib.suppress(PreconditionFailed):  # a concurrent finisher recorded it first
            client.meta.put_if_absent(key, dumps(record))
        outcomes.append(Outcome(action["id"], ok, detail, attempts))
    return outcomes


def executions(client: Client, event_id: str) -> list[dict[str, Any]]:
    prefix = f"{EXECUTIONS}{event_id}/"
    return [loads(i.key, client.meta.read(i.key)[0]) for i in client.meta.list(prefix)]


def rerun_outcome_key(run_id: str, event_id: str, action_id: str) -> str:
    return f"{RERUNS}{run_id}/{event_id}.{action_id}.json"


def pending_reruns(client: Client, skip: Set[str] = frozenset()) -> list[dict[str, Any]]:
    """The executions of `rerun` actions that name runs to re-create (whether or not the operator
    has done so yet: :func:`rerun_outcome_key` says), each with its ``key``. Two list requests;
    only the rerun actions' executions are read, and not those whose keys are in ``skip`` (the
    ones a poller settled already)."""
    ids = {a["id"] for a in list_actions(client) if a.get("do") == "rerun"}
    if not ids:
        return []
    keys = [
        i.key
        for i in client.meta.list(EXECUTIONS)
        if i.key.rsplit("/", 1)[-1].removesuffix(".json") in ids and i.key not in skip
    ]
    found = [loads(key, client.meta.read(key)[0]) | {"key": key} for key in keys]
    return [e for e in found if e.get("pending") == PENDING_OPERATOR and e.get("runs")]


def reruns(client: Client, run_ids: set[str] | None = None) -> list[dict[str, Any]]:
    """The operator's rerun outcomes (of ``run_ids`` only, if given), oldest run first: one list."""
    items = [i.key for i in client.meta.list(RERUNS)]
    wanted = [k for k in items if run_ids is None or k[len(RERUNS) :].split("/", 1)[0] in run_ids]
    return [loads(key, client.meta.read(key)[0]) for key in sorted(wanted)]
