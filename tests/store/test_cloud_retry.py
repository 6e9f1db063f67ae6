"""The retry helper and the cloud backends' configuration, without any emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datarun.errors import ObjectNotFound, StoreError, UsageError
from datarun.store.retry import RetryPolicy, describe_network_error, redact, retry_call, same_payload
from tests.store.emulators import DEV_KEY, azure_sdk_missing, gcs_sdk_missing, require


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def flaky(failures: int, exc: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    def fn(attempt: int) -> str:
        calls.append(attempt)
        if len(calls) <= failures:
            raise exc
        return "ok"

    return calls, fn


def transient(err: BaseException) -> str | None:
    return describe_network_error(err)


def run(fn: object, policy: RetryPolicy, clock: FakeClock) -> object:
    return retry_call(
        fn,  # type: ignore[arg-type]
        policy=policy,
        store="az://c/p",
        key="packs/ab/abc",
        action="read",
        transient=transient,
        hint="check that the endpoint is reachable",
        sleep=clock.sleep,
        clock=clock,
    )


def test_transient_errors_are_retried_with_growing_jittered_waits() -> None:
    clock = FakeClock()
    calls, fn = flaky(3, ConnectionResetError())
    assert run(fn, RetryPolicy(attempts=5), clock) == "ok"
    assert calls == [0, 1, 2, 3]
    caps = [0.2, 0.4, 0.8]
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=True))


def test_running_out_of_attempts_names_store_key_and_last_error() -> None:
    clock = FakeClock()
    calls, fn = flaky(99, ConnectionRefusedError())
    with pytest.raises(StoreError) as err:
        run(fn, RetryPolicy(attempts=5), clock)
    assert len(calls) == 5
    assert str(err.value) == (
        "store `az://c/p`: cannot read `packs/ab/abc` after 5 attempts: connection refused; "
        "check that the endpoint is reachable"
    )


def test_non_transient_errors_are_not_retried() -> None:
    clock = FakeClock()
    calls, fn = flaky(1, ValueError("HTTP 403"))
    with pytest.raises(ValueError):
        run(fn, RetryPolicy(attempts=5), clock)
    calls2, fn2 = flaky(1, ObjectNotFound("az://c/p", "k"))
    with pytest.raises(ObjectNotFound):
        run(fn2, RetryPolicy(attempts=5), clock)
    assert calls == calls2 == [0]
    assert clock.sleeps == []


def test_the_deadline_stops_retrying_early() -> None:
    clock = FakeClock()

    def slow(attempt: int) -> str:
        clock.now += 10  # every attempt takes 10 s and then times out
        raise TimeoutError

    with pytest.raises(StoreError, match="after 3 attempts: timed out"):
        run(slow, RetryPolicy(attempts=10, deadline=25), clock)


def test_policy_from_env() -> None:
    assert RetryPolicy.from_env({}) == RetryPolicy()
    policy = RetryPolicy.from_env({"DATARUN_STORE_RETRIES": "1", "DATARUN_STORE_RETRY_SECONDS": "2.5"})
    assert (policy.attempts, policy.deadline) == (1, 2.5)
    assert RetryPolicy.from_env({"DATARUN_STORE_RETRIES": "0"}).attempts == 1
    with pytest.raises(UsageError, match="DATARUN_STORE_RETRIES"):
        RetryPolicy.from_env({"DATARUN_STORE_RETRIES": "many"})


def test_network_errors_are_found_anywhere_in_the_chain() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as inner:
            raise RuntimeError("HTTPConnectionPool: Max retries exceeded") from inner
    except RuntimeError as outer:
        assert describe_network_error(outer) == "connection refused"
    assert describe_network_error(ValueError("x")) is None


def test_redact_masks_keys_signatures_and_named_secrets() -> None:
    text = (
        "GET /c/k?sv=2024-01-01&sig=abc%2Bdef&se=2030 failed; "
        f"AccountName=a;AccountKey={DEV_KEY};BlobEndpoint=http://x Authorization: SharedKey a:zzz hunter2"
    )
    out = redact(text, ["hunter2"])
    for secret in ("abc%2Bdef", DEV_KEY, "zzz", "hunter2"):
        assert secret not in out
    assert "sv=2024-01-01" in out


def test_same_payload_compares_bytes_and_files(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"abc" * 1000)
    assert same_payload(b"abc" * 1000, src)
    assert not same_payload(b"abc" * 999 + b"abd", src)
    assert same_payload(b"xy", memoryview(b"xy"))
    assert not same_payload(b"xy", tmp_path / "missing")


# -- configuration of the backends ---------------------------------------------------------------


@pytest.fixture
def azure_sdk() -> None:
    require(azure_sdk_missing())


@pytest.fixture
def gcs_sdk() -> None:
    require(gcs_sdk_missing())


CONN = (
    f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
)


@pytest.mark.usefixtures("azure_sdk")
def test_azure_credentials_are_picked_in_the_documented_order() -> None:
    from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential

    from datarun.store.azure import resolve_auth

    both = {
        "AZURE_STORAGE_CONNECTION_STRING": CONN,
        "DATARUN_AZURE_ACCOUNT_NAME": "other",
        "DATARUN_AZURE_STORAGE_KEY": "a2V5",
    }
    auth = resolve_auth(both)
    assert auth.source == "AZURE_STORAGE_CONNECTION_STRING"
    assert auth.account_url == "http://127.0.0.1:10000/devstoreaccount1"
    assert isinstance(auth.credential, AzureNamedKeyCredential)

    auth = resolve_auth({"DATARUN_AZURE_ACCOUNT_NAME": "acct", "DATARUN_AZURE_STORAGE_KEY": "a2V5"})
    assert auth.account_url == "https://acct.blob.core.windows.net"
    assert auth.source == "DATARUN_AZURE_ACCOUNT_NAME + DATARUN_AZURE_STORAGE_KEY"

    auth = resolve_auth({"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_KEY": "a2V5"})
    assert auth.source == "AZURE_STORAGE_ACCOUNT + AZURE_STORAGE_KEY"

    auth = resolve_auth(
        {
            "DATARUN_AZURE_ACCOUNT_NAME": "acct",
            "DATARUN_AZURE_SAS_TOKEN": "?sv=1&sig=s3cret",
            "DATARUN_AZURE_ENDPOINT": "http://127.0.0.1:9/acct/",
        }
    )
    assert isinstance(auth.credential, AzureSasCredential)
    assert auth.account_url == "http://127.0.0.1:9/acct"

    auth = resolve_auth({"DATARUN_AZURE_ACCOUNT_NAME": "acct"})
    assert "DefaultAzureCredential" in auth.source

    dev = resolve_auth({"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    assert dev.account_url == "http://127.0.0.1:10000/devstoreaccount1"


@pytest.mark.usefixtures("azure_sdk")
def test_azure_configuration_errors_name_the_variables_and_hide_secrets() -> None:
    from datarun.store.azure import AzureStore, resolve_auth

    with pytest.raises(StoreError, match=r"AZURE_STORAGE_CONNECTION_STRING.*DATARUN_AZURE_ACCOUNT_NAME"):
        resolve_auth({})
    with pytest.raises(UsageError, match="DATARUN_AZURE_ACCOUNT_NAME") as err:
        resolve_auth({"DATARUN_AZURE_STORAGE_KEY": "c2VjcmV0"})
    assert "c2VjcmV0" not in str(err.value)
    with pytest.raises(UsageError, match="malformed") as err:
        resolve_auth({"AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;Eby8vdM02xNOcqFlqUwJPLlm"})
    assert "Eby8vdM02xNOcqFlqUwJPLlm" not in str(err.value)
    with pytest.raises(UsageError, match="az://<container>"):
        AzureStore.from_url("az://", env={"AZURE_STORAGE_CONNECTION_STRING": CONN})
    with pytest.raises(UsageError, match="container name"):
        AzureStore.from_url("az://Bad_Name/x", env={"AZURE_STORAGE_CONNECTION_STRING": CONN})

    store = AzureStore.from_url("az://data/team/a", env={"AZURE_STORAGE_CONNECTION_STRING": CONN})
    try:
        assert store.url == "az://data/team/a"
        for shown in (repr(store), store.url, repr(store.auth)):
            assert DEV_KEY not in shown and "AccountKey" not in shown
    finally:
        store.close()


@pytest.mark.usefixtures("azure_sdk")
def test_open_store_knows_az_and_gs(monkeypatch: pytest.MonkeyPatch) -> None:
    from datarun.store import open_store
    from datarun.store.azure import AzureStore

    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", CONN)
    store = open_store("az://data/prefix")
    assert isinstance(store, AzureStore) and store.prefix == "prefix"
    store.close()


@pytest.mark.usefixtures("gcs_sdk")
def test_gcs_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from datarun.store import open_store
    from datarun.store.gcs import GCSStore, resolve_auth

    auth = resolve_auth({"STORAGE_EMULATOR_HOST": "127.0.0.1:4443", "GOOGLE_APPLICATION_CREDENTIALS": "/nope"})
    assert (auth.endpoint, auth.project, auth.source) == ("http://127.0.0.1:4443", "test", "STORAGE_EMULATOR_HOST")

    with pytest.raises(StoreError, match="GOOGLE_APPLICATION_CREDENTIALS=`/nope`"):
        resolve_auth({"GOOGLE_APPLICATION_CREDENTIALS": "/nope"})
    bad = tmp_path / "key.json"
    bad.write_text(json.dumps({"type": "service_account", "private_key": "s3cret-material"}))
    with pytest.raises(StoreError, match="not a service-account key file") as err:
        resolve_auth({"GOOGLE_APPLICATION_CREDENTIALS": str(bad)})
    assert "s3cret-material" not in str(err.value)

    with pytest.raises(UsageError, match="bucket name"):
        GCSStore.from_url("gs://A/x", env={"STORAGE_EMULATOR_HOST": "127.0.0.1:4443"})
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443")
    store = open_store("gs://bucket/some/prefix")
    assert isinstance(store, GCSStore) and store.url == "gs://bucket/some/prefix"
    store.close()
