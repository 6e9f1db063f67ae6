"""Azure listings are parsed by datarun, not by the SDK's generic deserializer: pages on Azurite,
and the parser on the forms of response it must handle."""

from __future__ import annotations

import pytest

from datarun.errors import StoreError
from datarun.store import azure
from datarun.store.azure import _parse_folders_page, _parse_list_page
from tests.store.emulators import Azurite


def test_a_listing_of_many_pages_is_whole_sorted_and_resumable(
    azurite_server: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(azure, "LIST_PAGE", 7)  # 7 keys a request: 50 keys take 8 pages
    container = azurite_server.new_bucket()
    store = azurite_server.store(container)
    try:
        keys = [f"repos/r/bundles/{i:03d}.json" for i in range(50)] + ["repos/s/repo.json", "other/x"]
        for i, key in enumerate(keys):
            store.put(key, b"x" * i)
        listed = list(store.list("repos/"))
        assert [i.key for i in listed] == sorted(k for k in keys if k.startswith("repos/"))
        assert [i.size for i in listed] == [keys.index(i.key) for i in listed]
        assert all(i.etag and '"' not in i.etag for i in listed)
        assert listed[3].etag == store.head(listed[3].key).etag, "a listing's etag compares equal to a head's"
        after = list(store.list("repos/", start_after="repos/r/bundles/040.json"))
        assert [i.key for i in after] == [f"repos/r/bundles/{i:03d}.json" for i in range(41, 50)] + [
            "repos/s/repo.json"
        ]
        assert list(store.list("nothing/")) == []
        for i in range(20):
            store.put(f"repos/f{i:02d}/repo.json", b"{}")
        folders = list(store.list_folders("repos/"))  # 22 folders, 7 to a page
        assert folders == [f"repos/f{i:02d}/" for i in range(20)] + ["repos/r/", "repos/s/"]
    finally:
        store.close()
        azurite_server.drop_bucket(container)


def test_the_parser_takes_encoded_names_and_refuses_what_is_not_a_listing() -> None:
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ContainerName="c"><Blobs>'
        b"<Blob><Name>p/a.json</Name><Properties><Content-Length>12</Content-Length>"
        b'<Etag>"0x8D1"</Etag></Properties></Blob>'
        b'<Blob><Name Encoded="true">p/b%01c</Name><Properties><Content-Length>0</Content-Length>'
        b"<Etag>0x8D2</Etag></Properties></Blob>"
        b"</Blobs><NextMarker>token-2</NextMarker></EnumerationResults>"
    )
    items, token = _parse_list_page(body)
    assert [(i.key, i.size, i.etag) for i in items] == [("p/a.json", 12, "0x8D1"), ("p/b\x01c", 0, "0x8D2")]
    assert token == "token-2"
    last = b"<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>"
    assert _parse_list_page(last) == ([], None)
    for bad in (
        b"<html>gateway timeout",
        b"<EnumerationResults><Blobs><Blob><Name>x</Name></Blob></Blobs></EnumerationResults>",
    ):
        with pytest.raises(StoreError, match="blob listing that datarun cannot read"):
            _parse_list_page(bad)


def test_the_folder_parser_takes_encoded_names_and_refuses_what_is_not_xml() -> None:
    body = (
        b"<EnumerationResults><Blobs><BlobPrefix><Name>repos/b/</Name></BlobPrefix>"
        b'<BlobPrefix><Name Encoded="true">repos/a%01/</Name></BlobPrefix>'
        b"<Blob><Name>repos/top.json</Name><Properties/></Blob></Blobs><NextMarker>m</NextMarker></EnumerationResults>"
    )
    assert _parse_folders_page(body) == (["repos/a\x01/", "repos/b/"], "m")
    with pytest.raises(StoreError, match="folder listing that datarun cannot read"):
        _parse_folders_page(b"<html>gateway timeout")
