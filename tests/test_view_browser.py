"""`icr-data view` in a real browser: headless Chromium, driven through Selenium by Debian's
chromium-driver, walks the tiny demo store as a person would (store page, version page, pairs
filtered by language, a prompt, one pair marked with a reason, the child version written), then
the child is checked on disk: one pair fewer, and a manifest and card that give the reason.
A screenshot of each page is saved under the test's temporary folder.

    pytest -m slow tests/test_view_browser.py          # skipped when chromium/chromedriver are missing

The walk also takes the screenshots of docs/view.md, on a copy of a store (the copy gets the
curated child version, the store itself is not written):

    python tests/test_view_browser.py icr_store docs/     # docs/view_store.png, ..., view_diff.png
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

DATASET = "demo-tiny"
REASON = "chosen answer is not in German"


def browser():
    """A headless Chromium at 1280x900 through Debian's chromedriver (no Selenium Manager, no
    network)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--hide-scrollbars", "--no-first-run",
                "--disable-extensions", "--lang=en-US"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for errors
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    # the page itself 1280x900 (--window-size counts the window's frame too)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
    return driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(store: Path, port: int) -> tuple[subprocess.Popen, str]:
    """`icr-data view STORE --port PORT` in its own process, and the URL it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "icr_data.cli", "view", str(store), "--port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    url = proc.stdout.readline().strip()
    if url != f"http://127.0.0.1:{port}/":
        proc.kill()
        raise AssertionError(f"the view printed {url!r}: {proc.stderr.read()[-2000:]}")
    return proc, url


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()


def walk(driver, url: str, shots: Path, version: str, lang: str, prefix: str = "") -> dict:
    """Store page -> the version -> its pairs in `lang` -> the first pair's prompt -> mark that
    pair with REASON -> write the child version. A screenshot of each page goes to `shots`
    (`<prefix>store.png`, ...); returns what the pages showed."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    wait = WebDriverWait(driver, 60)
    seen: dict = {}

    def shot(name: str) -> None:
        driver.save_screenshot(str(shots / f"{prefix}{name}.png"))

    def css(selector: str, within=None):
        return (within or driver).find_element(By.CSS_SELECTOR, selector)

    def all_css(selector: str, within=None):
        return (within or driver).find_elements(By.CSS_SELECTOR, selector)

    def scroll_to(selector: str) -> None:  # with its heading in view
        driver.execute_script(
            "arguments[0].scrollIntoView(); window.scrollBy(0, -70)", css(selector)
        )

    driver.get(url)  # the store page
    seen["store_versions"] = [r.get_attribute("data-version") for r in all_css("tr.version")]
    shot("store")
    css(f'tr.version[data-version="{DATASET}/{version}"] a.version-link').click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "version-title"), f"{DATASET}/{version}"))
    seen["funnel_pairs"] = {r.get_attribute("data-lang"): int(css("td.pairs", r).get_attribute("data-value"))
                            for r in all_css("#funnel tbody tr[data-lang]")}  # fmt: skip
    seen["histograms"] = len(all_css("#margin-histograms svg.chart-histogram"))
    shot("version")
    scroll_to("#margin-histograms")
    shot("charts")

    css("#pairs-link").click()  # the pairs browser, then filtered by language
    wait.until(ec.presence_of_element_located((By.ID, "filters")))
    Select(css("#filter-lang")).select_by_value(lang)
    css("#filter-apply").click()
    wait.until(ec.url_contains(f"lang={lang}"))
    seen["pairs_url"] = driver.current_url
    seen["pairs_total"] = int(css("#pairs-total").get_attribute("data-total"))
    seen["pair_keys"] = [tuple(json.loads(r.get_attribute("data-pair-key")))
                         for r in all_css("#pairs tr.pair")]  # fmt: skip
    seen["margins"] = [float(c.get_attribute("data-value")) for c in all_css("#pairs td.margin")]
    shot("pairs")

    first = css("#pairs tr.pair")
    key = tuple(json.loads(first.get_attribute("data-pair-key")))
    css("a.prompt-link", first).click()  # the prompt page of the first pair
    wait.until(ec.presence_of_element_located((By.ID, "candidates")))
    seen["prompt_url"] = driver.current_url
    seen["candidates"] = {int(r.get_attribute("data-sample-idx")): r.get_attribute("data-roles")
                          for r in all_css("#candidates tr.candidate")}  # fmt: skip
    shot("prompt")

    row = css(f"#prompt-pairs tr.pair[data-pair-key='{json.dumps(list(key), ensure_ascii=False)}']")
    css("form.mark-form input[name=reason]", row).send_keys(REASON)
    css("form.mark-form .mark-button", row).click()  # back on the prompt page, the pair marked
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#marks li.mark")))
    seen["after_mark_url"] = driver.current_url
    seen["marks_count"] = int(css("#marks-count").get_attribute("data-count"))
    seen["marked"] = [tuple(json.loads(li.get_attribute("data-pair-key")))
                      for li in all_css("#marks li.mark")]  # fmt: skip
    scroll_to("#prompt-pairs")
    shot("marked")

    css("#write-version").click()  # the child version, written through curate.drop_pairs
    wait.until(ec.presence_of_element_located((By.ID, "written")))
    seen["key"] = key
    seen["child_url"] = driver.current_url
    seen["child_title"] = css("#version-title").text
    seen["dropped"] = css("#written").get_attribute("data-dropped")
    seen["child_dropped_by_hand"] = css("#dropped-by-hand").text
    seen["child_reasons"] = {
        tuple(json.loads(r.get_attribute("data-dropped-key"))): css("td.reason", r).text
        for r in all_css("#dropped-pairs tr.dropped-pair")
    }
    shot("child")
    return seen


def have_browser() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@pytest.mark.slow
@pytest.mark.skipif(not have_browser(), reason="needs Debian's chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them)")  # fmt: skip
def test_a_person_curates_a_version_in_a_real_browser(build_tiny, tmp_path):
    import polars as pl

    from icr_data.store import store

    pytest.importorskip("selenium", reason="selenium is in the dev extra")
    root = tmp_path / "store"
    v1 = build_tiny(root, "sampling.max_tokens=8", "prompts.limit=3", "prompts.languages=[en, de, fr]")  # fmt: skip
    parent = store.read_manifest(v1)
    parent_pairs = pl.read_parquet(store.config_files(v1, "pairs"))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    port = free_port()
    proc, url = serve(root, port)
    driver = browser()
    try:
        seen = walk(driver, url, shots, "v1", "de")
        console = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
        code = stop(proc)
    assert code == 130  # Ctrl-C ends the server as the CLI says

    # what the pages showed, against the parent's manifest and Parquet files
    assert seen["store_versions"] == [f"{DATASET}/v1"]
    assert seen["funnel_pairs"] == {lang: c["pairs"] for lang, c in parent["counts"].items()}
    assert seen["histograms"] == sum(c["pairs"] > 0 for c in parent["counts"].values())
    de = parent_pairs.filter(pl.col("lang") == "de")
    assert seen["pairs_url"].startswith(f"{url}v/{DATASET}/v1/pairs?lang=de")
    assert seen["pairs_total"] == parent["counts"]["de"]["pairs"] == de.height > 1
    assert {k[1] for k in seen["pair_keys"]} == {"de"}
    assert seen["margins"] == sorted(de["margin"].to_list(), reverse=True)
    key = seen["key"]
    pid, lang, chosen, rejected = key
    assert seen["prompt_url"] == f"{url}v/{DATASET}/v1/prompt?prompt_id={pid}&lang=de"
    assert seen["candidates"][chosen] == "chosen" and seen["candidates"][rejected] == "rejected"
    assert seen["after_mark_url"] == seen["prompt_url"]  # the mark form returns to its page
    assert seen["marks_count"] == 1 and seen["marked"] == [key]
    assert seen["child_url"] == f"{url}v/{DATASET}/v2?dropped=1"
    assert seen["child_title"] == f"{DATASET}/v2" and seen["dropped"] == "1"
    assert seen["child_dropped_by_hand"] == "1 pair(s)" and seen["child_reasons"] == {key: REASON}
    assert console == []  # no script or resource error in the browser

    # the child on disk: a normal version, one pair fewer, and why
    v2 = root / DATASET / "v2"
    assert store.versions(root / DATASET) == ["v1", "v2"]
    child = store.read_manifest(v2)
    assert child["parent"] == f"{DATASET}/v1"
    assert child["totals"]["pairs"] == parent["totals"]["pairs"] - 1
    assert child["counts"]["de"]["pairs"] == parent["counts"]["de"]["pairs"] - 1
    assert child["funnel"]["de"]["dropped_pairs"].get("by hand") == 1
    assert [(d["prompt_id"], d["lang"], d["chosen_sample_idx"], d["rejected_sample_idx"],
             d["reason"]) for d in child["derived"]["dropped"]] == [(*key, REASON)]  # fmt: skip
    child_pairs = pl.read_parquet(store.config_files(v2, "pairs"))
    cols = ["prompt_id", "lang", "chosen_sample_idx", "rejected_sample_idx"]
    keys = lambda df: [tuple(r) for r in df.select(cols).iter_rows()]  # noqa: E731
    assert keys(child_pairs) == [k for k in keys(parent_pairs) if k != key]
    assert child_pairs.height == parent_pairs.height - 1
    card = (v2 / "README.md").read_text(encoding="utf-8")
    assert f"`{DATASET}/v1`" in card and re.search(rf"\|\s*{re.escape(REASON)}\s*\|\s*1\s*\|", card)
    assert store.read_manifest(v1)["totals"]["pairs"] == parent_pairs.height  # parent untouched

    names = ("store", "version", "charts", "pairs", "prompt", "marked", "child")
    assert sorted(p.name for p in shots.iterdir()) == sorted(f"{n}.png" for n in names)
    for n in names:  # real images of the 1280x900 window, not blank files
        data = (shots / f"{n}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert (width, height) == (1280, 900)


def main(argv: list[str]) -> None:
    """The docs' screenshots: the walk over a copy of the store STORE (its dataset DATASET,
    demo-tiny by default; `demo` for the SmolLM2 demo), PNGs into FOLDER."""
    import tempfile

    global DATASET
    if len(argv) not in (2, 3):
        raise SystemExit("usage: python tests/test_view_browser.py STORE FOLDER [DATASET]")
    store_dir, out = Path(argv[0]), Path(argv[1])
    DATASET = argv[2] if len(argv) == 3 else DATASET
    versions = sorted((store_dir / DATASET).glob("v*"), key=lambda p: int(p.name[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / store_dir.name
        shutil.copytree(store_dir, copy)
        proc, url = serve(copy, free_port())
        driver = browser()
        try:
            seen = walk(driver, url, out, versions[-1].name, "de", prefix="view_")
            child = seen["child_url"].split("/")[-1].split("?")[0]
            driver.get(f"{url}diff?a={DATASET}/{versions[-1].name}&b={DATASET}/{child}")
            driver.execute_script("document.getElementById('diff-counts').scrollIntoView()")
            driver.execute_script("window.scrollBy(0, -70)")
            driver.save_screenshot(str(out / "view_diff.png"))
            driver.get(url)  # the store again, the child listed under its parent
            driver.save_screenshot(str(out / "view_store.png"))
        finally:
            driver.quit()
            stop(proc)
    print(json.dumps({k: v for k, v in seen.items() if k.endswith("url")}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
