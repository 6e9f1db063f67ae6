"""`datarun quickstart`: the whole loop on the embedded default store, narrated."""

from __future__ import annotations

from pathlib import Path

import click

from datarun.cli.common import state, with_store
from datarun.errors import ConflictError, IntegrityError


def _sample(folder: Path) -> None:
    import random  # here, not at the top: every CLI start imports this module

    rng = random.Random(7)  # noqa: S311 - sample data, not secrets
    (folder / "params.json").write_text('{"learning_rate": 0.01, "epochs": 3}\n')
    csv = folder / "data" / "measurements.csv"
    csv.parent.mkdir(parents=True)
    csv.write_text("t,value\n" + "".join(f"{t},{rng.gauss(0, 1):.6f}\n" for t in range(20_000)))
    blob = folder / "data" / "weights.bin"
    blob.write_bytes(rng.randbytes(6 << 20))
    (folder / "README.txt").write_text("a sample run folder made by `datarun quickstart`\n")


def _same_tree(a: Path, b: Path) -> bool:
    import filecmp

    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return not mismatch and not errors and all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


@click.command()
@click.option("--repo", default="quickstart", show_default=True, help="Repo to use (created if missing).")
@with_store
def quickstart(repo: str) -> None:
    """Upload a sample folder, label it, download it back, re-upload it, and show what happened."""
    client = state().client()
    say = click.echo
    say(f"store: {client.meta.url}")
    try:
        client.create_repo(repo, "made by datarun quickstart")
        say(f"1. created repo `{repo}`")
    except ConflictError:
        say(f"1. repo `{repo}` already exists; reusing it")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="datarun-quickstart-") as tmp:
        src = Path(tmp) / "run-001"
        src.mkdir()
        _sample(src)
        first = client.upload(repo, src, "quickstart sample", label="latest")
        s = first.stats
        say(
            f"2. uploaded {s.files} files ({s.bytes_total} bytes) as bundle {first.bundle.id} "
            f"in {first.seconds:.2f}s; {s.bytes_stored} bytes stored after compression and dedup"
        )
        say(f"3. label `latest` -> {client.get_label(repo, 'latest').bundle}")
        dest = Path(tmp) / "downloaded"
        client.download(client.resolve(repo, label="latest"), dest)
        if not _same_tree(src, dest):
            raise IntegrityError("quickstart: the downloaded folder differs from the uploaded one")
        say("4. downloaded label `latest` to a fresh folder: identical to the original")
        again = client.upload(repo, src, "quickstart sample, unchanged")
        say(
            f"5. re-uploaded the unchanged folder as bundle {again.bundle.id} in {again.seconds:.2f}s: "
            f"{again.stats.bytes_new} new bytes (everything deduplicated)"
        )
        report = client.verify(again.bundle)
        say(f"6. verified bundle {again.bundle.id}: {report.files} files, every chunk hash-checked")
    say(f"\nnext: datarun bundle list --repo {repo}    datarun label history --repo {repo} --label latest")
