"""The runs page (query box, params columns, a run's page) and the lineage picture with invalid
nodes marked, in Debian's headless chromium, over a real store with runs and an invalidation."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from datarun.catalog import open_index
from datarun.lineage import Graph, bundle_node, invalidate
from datarun.model import BundleRef, RunRecord
from datarun.repo import Client
from datarun.runs import SUCCEEDED, BundleLink, Run
from datarun.store import LocalStore
from tests.web.conftest import serve
from tests.web.test_browser import _click_and_wait, _wait, browser, downloads

__all__ = ["browser", "downloads"]  # fixtures are registered by import

SHOTS = Path(os.environ.get("DATARUN_WEB_SHOTS", "")) if os.environ.get("DATARUN_WEB_SHOTS") else None
REASON = "the labels of day one are wrong"


@dataclass(frozen=True)
class Lab:
    base: str
    client: Client
    raw: str  # the bundle that gets invalidated
    clean: str  # a bundle nothing invalid reaches
    runs: dict[float, str]  # lr -> run id
    model: str  # output of the lr=0.1 run, downstream of `raw`


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("lab")
    src = root / "src"
    src.mkdir()
    (src / "x.csv").write_text("a,b\n1,2\n")
    client = Client(LocalStore(root / "store"), cache_dir=root / "cache", author=("ada", "ada@example.org"))
    client.create_repo("data")
    client.create_repo("models")
    raw = client.upload("data", src, "day one", label="latest").bundle.id
    (src / "y.csv").write_text("c\n3\n")
    clean = client.upload("data", src, "day two").bundle.id
    runs: dict[float, str] = {}
    model = ""
    for lr, input_id in ((0.1, raw), (0.01, clean), (0.001, clean)):
        run_id = client.runs.new_id()
        out = root / f"out-{lr}"
        out.mkdir()
        (out / "w.bin").write_bytes(b"w" * 100)
        record = RunRecord(run_id=run_id, params={"lr": lr})
        made = client.upload("models", out, f"lr {lr}", inputs=(BundleRef("data", input_id),), run=record)
        client.runs.create(
            Run(
                id=run_id,
                start="2023-06-09T14:28:56Z",
                title=f"train lr={lr}",
                phase=SUCCEEDED,
                params={"lr": lr, "model": {"layers": 2}},
                inputs=(BundleLink("data", "data", input_id),),
                outputs=(BundleLink("model", "models", made.bundle.id),),
                transfers={"model": made.summary},
            )
        )
        runs[lr] = run_id
        model = model or made.bundle.id
    client.runs.tag(runs[0.1], ("first",))  # a second version for the run page
    with open_index(None, client.cache_dir) as index:
        index.sync(client.meta)
        graph = Graph(index)
        graph.sync(client.meta)
        invalidate(client.meta, graph, bundle_node("data", raw), reason=REASON, who="ada", client=client)
    with serve(client) as base:
        yield Lab(base, client, raw, clean, runs, model)
    client.close()


def _shot(browser: webdriver.Chrome, name: str) -> None:
    if SHOTS is not None:
        browser.save_screenshot(str(SHOTS / name))


def _titles(browser: webdriver.Chrome) -> list[str]:
    return [row.find_elements(By.TAG_NAME, "td")[1].text for row in browser.find_elements(By.CSS_SELECTOR, "tr.run")]


def test_the_query_box_filters_runs_and_shows_params_as_columns(browser: webdriver.Chrome, lab: Lab) -> None:
    browser.get(f"{lab.base}/runs")
    assert sorted(_titles(browser)) == ["train lr=0.001", "train lr=0.01", "train lr=0.1"]
    headers = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#runs th.param")]
    assert headers == ["lr", "model.layers"]
    box = browser.find_element(By.ID, "query")
    box.send_keys("run.params.lr < 0.05 AND run.params.model.layers = 2")
    _click_and_wait(browser, browser.find_element(By.ID, "run-query"))
    _wait(browser, By.ID, "runs")
    assert sorted(_titles(browser)) == ["train lr=0.001", "train lr=0.01"]
    assert str(browser.find_element(By.ID, "query").get_attribute("value")).startswith("run.params.lr < 0.05")
    cells = {r.find_elements(By.TAG_NAME, "td")[1].text: r.find_elements(By.CSS_SELECTOR, "td.param")[0].text
             for r in browser.find_elements(By.CSS_SELECTOR, "tr.run")}  # fmt: skip
    assert cells == {"train lr=0.001": "0.001", "train lr=0.01": "0.01"}
    _shot(browser, "web-runs.png")
    browser.get(f"{lab.base}/runs?q=run.invalid%20%3D%20true")
    assert _titles(browser) == ["train lr=0.1"], "the invalidation reached the run that read the bad bundle"
    assert browser.find_element(By.CSS_SELECTOR, "tr.run.invalid .invalid-mark").text == "INVALID"
    hint = browser.find_elements(By.CSS_SELECTOR, ".hint code")[2].text  # the page's own example works
    browser.get(f"{lab.base}/runs?q={urllib.parse.quote(hint)}")
    assert hint == "ARRAY_CONTAINS(run.tags, 'first')" and _titles(browser) == ["train lr=0.1"]
    browser.get(f"{lab.base}/runs?q=run.params.lr%20%3C")
    error = _wait(browser, By.ID, "query-error").text
    assert "run.params.lr <" in str(browser.find_element(By.ID, "query").get_attribute("value"))
    assert error.startswith("query syntax error at position 16") and "ends too early" in error, error


def test_a_run_page_shows_its_record_versions_files_and_transfer(browser: webdriver.Chrome, lab: Lab) -> None:
    run_id = lab.runs[0.1]
    browser.get(f"{lab.base}/runs")
    link = next(a for a in browser.find_elements(By.CSS_SELECTOR, "#runs a.id") if a.text == run_id)
    _click_and_wait(browser, link)
    _wait(browser, By.ID, "record")
    assert REASON in browser.find_element(By.ID, "invalid").text
    assert [r.text.split()[0] for r in browser.find_elements(By.CSS_SELECTOR, "#versions tr")[1:]] == ["2", "1"]
    files = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#files tr")[1:]]
    assert files == [f"input data data {lab.raw}", f"output model models {lab.model}"]
    assert (
        "0.1" in browser.find_element(By.ID, "params").text
        and "model.layers" in browser.find_element(By.ID, "params").text
    )
    transfer = browser.find_element(By.CSS_SELECTOR, "#transfers tr:nth-child(2)").text.split()
    assert transfer[:3] == ["model", "100", "B"], transfer
    assert f'"id": "{run_id}"' in browser.find_element(By.ID, "record-json").text


def test_an_invalidated_bundle_is_marked_on_its_page_and_in_the_picture(browser: webdriver.Chrome, lab: Lab) -> None:
    browser.get(f"{lab.base}/repos/data/bundles/{lab.raw}")
    assert browser.find_element(By.CSS_SELECTOR, "h1 .invalid-mark").text == "INVALID"
    assert REASON in browser.find_element(By.ID, "invalid").text
    _click_and_wait(browser, browser.find_element(By.ID, "lineage-link"))
    svg = _wait(browser, By.CSS_SELECTOR, "#picture svg")
    marked = {
        r.find_element(By.TAG_NAME, "code").text
        for r in browser.find_elements(By.CSS_SELECTOR, "#invalid-nodes tr.invalid")
    }
    run = f"run/{lab.runs[0.1]}"
    assert marked == {f"bundle/data/{lab.raw}", run, f"bundle/models/{lab.model}"}
    # In the SVG itself: the invalid nodes' text says so, in red; the picture reaches the model.
    source = str(svg.get_attribute("outerHTML"))
    assert source.count("INVALID") == 3 and "#c62828" in source
    assert lab.model[:10] in source and lab.raw[:10] in source
    _shot(browser, "web-lineage.png")
    browser.get(f"{lab.base}/repos/data/bundles/{lab.clean}")
    assert not browser.find_elements(By.CSS_SELECTOR, ".invalid-mark")
    _click_and_wait(browser, browser.find_element(By.ID, "lineage-link"))
    _wait(browser, By.CSS_SELECTOR, "#picture svg")
    assert not browser.find_elements(By.ID, "invalid-nodes"), "nothing invalid reaches the clean bundle"
    assert browser.find_element(By.ID, "none-invalid").text == "Nothing in this picture is invalid."


def _status(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_unknown_and_malformed_runs_and_nodes_are_error_pages(lab: Lab) -> None:
    unknown = "2" + "A" * 26
    code, body = _status(f"{lab.base}/runs/{unknown}")
    assert code == 404 and f"run `{unknown}` not found" in body
    code, body = _status(f"{lab.base}/runs/nope")
    assert code == 400 and "is not a run id" in body
    code, body = _status(f"{lab.base}/lineage?repo=data")
    assert code == 400 and "give both repo= and bundle=" in body
    code, body = _status(f"{lab.base}/lineage?repo=data&bundle=nolabel")
    assert code == 404, body
    code, body = _status(f"{lab.base}/runs?top=0")
    assert code == 400 and "top=0" in body
