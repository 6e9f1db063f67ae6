"""Kubernetes keeps 4096 bytes of a termination message: a long result must shrink, not break."""

from __future__ import annotations

import json

from datarun_sidecar.protocol import OutputResult, SidecarResult, termination_message


def _result(outputs: int, error_size: int) -> SidecarResult:
    result = SidecarResult("fuse", 0)
    for n in range(outputs):
        out = OutputResult(name=f"out{n}", repo="results", path=f"/data/out{n}", label=f"run-{n}")
        if n % 2:
            out.error = "store unreachable: " + "x" * error_size
        else:
            out.bundle, out.uploaded = f"3MSzG94FgpzhCg4CsM5Y25D{n:04d}", True
        result.outputs.append(out)
    return result


def test_a_short_result_is_written_whole() -> None:
    result = _result(2, 10)
    assert json.loads(termination_message(result)) == result.to_json()


def test_a_long_result_stays_valid_json_under_the_limit_and_keeps_every_bundle_id() -> None:
    for outputs, error_size in ((10, 2000), (40, 300), (120, 50), (400, 5)):
        result = _result(outputs, error_size)
        text = termination_message(result)
        assert len(text.encode()) <= 4096, (outputs, error_size)
        parsed = json.loads(text)
        assert parsed["truncated"] is True and parsed["status"] == "failed"
        kept = {o["name"]: o["bundle"] for o in parsed["outputs"] if o.get("bundle")}
        made = {o.name: o.bundle for o in result.outputs if o.bundle}
        if "outputsOmitted" in parsed:  # too many to fit: a prefix of them, and the count of the rest
            assert kept.items() <= made.items() and (kept == made or len(kept) > 50)
            assert parsed["outputsOmitted"] == len(result.outputs) - len(parsed["outputs"])
        else:
            assert kept == made
