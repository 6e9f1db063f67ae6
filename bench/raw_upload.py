"""The raw-SDK peer of bench_cloud.py as a process of its own, so that it pays for starting
Python and importing its SDK just as the `datarun` command does.

    python bench/raw_upload.py azure CONNECTION_STRING CONTAINER FILE...
    python bench/raw_upload.py gcs ENDPOINT BUCKET FILE...

Only the SDK is imported here (not the bench, not pytest), so the start-up it pays is the SDK's.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def azure(connection_string: str, container: str, files: list[Path]) -> None:
    """One file after another, each with upload_blob(max_concurrency=8): the SDK's own parallel path."""
    from azure.storage.blob import BlobServiceClient

    with BlobServiceClient.from_connection_string(connection_string) as service:
        client = service.get_container_client(container)
        for path in files:
            with path.open("rb") as handle:
                client.upload_blob(
                    f"raw/{path.name}", handle, length=path.stat().st_size, max_concurrency=8, overwrite=True
                )


def gcs(endpoint: str, bucket: str, files: list[Path]) -> None:
    """All files at once from a thread pool, each a resumable upload in 8 MiB pieces."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud.storage import Client

    client = Client(
        project="test",
        credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
        client_options={"api_endpoint": endpoint},
    )
    target = client.bucket(bucket)

    def one(path: Path) -> None:
        blob = target.blob(f"raw/{path.name}")
        blob.chunk_size = 8 << 20
        blob.upload_from_filename(str(path))

    try:
        with ThreadPoolExecutor(len(files)) as pool:
            list(pool.map(one, files))
    finally:
        client.close()


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[0] not in ("azure", "gcs"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, where, bucket, *names = argv
    (azure if kind == "azure" else gcs)(where, bucket, [Path(n) for n in names])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
