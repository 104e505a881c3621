"""`icr-data view`: every page of the web app fetched as a browser would, its figures checked
against the manifest and the Parquet files; paging, filters and sorts against polars; the
prompt page's filter verdicts against the pair stage's funnel; refusals of names outside the
store; a damaged version; curation through commands.curate; and the real server started by the
CLI on a free port, fetched with httpx and stopped with Ctrl-C.

    pytest tests/test_view.py
"""

from __future__ import annotations

import html
import json
import re

import numpy as np
import polars as pl
import pytest
from datasets import Dataset
from starlette.testclient import TestClient

from icr_data.base.config import Recipe
from icr_data.commands.versioning import run_facts
from icr_data.pairing.pairs import PAIR_FEATURES, PairingConfig, PairStats, make_pairs
from icr_data.store import store
from icr_data.store.card import render_card
from icr_data.store.manifest import make_manifest, margin_summary
from icr_data.view import pairs_query
from icr_data.view.app import create_app

TOL = 1e-9  # figures are written with repr(float) or more digits than this


def attrs(page: str, element: str, attr: str) -> list[str]:
    """The values of `attr` on every `element` opening tag (unescaped)."""
    return [html.unescape(v) for v in re.findall(rf'<{element}\b[^>]*\b{attr}="([^"]*)"', page)]


def cells(page: str, cls: str) -> list[float]:
    """data-value of every <td> whose class list holds `cls`, as numbers (None: nan)."""
    found = re.findall(rf'<td class="[^"]*\b{cls}\b[^"]*" data-value="([^"]*)"', page)
    return [float("nan") if v in ("None", "") else float(v) for v in found]


def keys(page: str) -> list[tuple]:
    return [tuple(json.loads(k)) for k in attrs(page, "tr", "data-pair-key")]


def write(root, pairs_rows, cand_rows, langs, name=None, modes=None, judge=None, alphas=None):
    """A version written through the real manifest and store code (`modes`: mode agreement per
    language, `judge`: the judge's agreement per language, as the stages measure them;
    `alphas`: the length-control alpha per language, where pairs_rows are given)."""
    cands = Dataset.from_list(cand_rows)
    if pairs_rows is None:  # paired by the pair stage, its funnel recorded
        pairs, stats = make_pairs(cands, PairingConfig())
    else:
        pairs = Dataset.from_list(pairs_rows, features=PAIR_FEATURES)
        stats = PairStats(judge_agreement=judge or {}, alphas=alphas or {})
    prompts = Dataset.from_dict({"lang": [r["lang"] for r in cand_rows if r["sample_idx"] == 0]})
    counts, margins = margin_summary(pairs, cands, prompts, langs)
    recipe = Recipe(dataset="t", license="apache-2.0")
    recipe.prompts.source = "p.jsonl"
    ids = {r: {"name": r} for r in ("generator", "policy", "reference")}
    facts = run_facts(recipe, ids, stats, modes)
    manifest = make_manifest(recipe, ids, facts, counts, margins, {})
    return store.write_version(root, "t", {"pairs": pairs, "candidates": cands}, manifest,
                               render_card, name=name)  # fmt: skip


# ------------------------------------------------------------------------ a many-pairs version
LANGS = ("de", "fr", "ru")
N_PER_LANG = 70


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """210 pairs with seeded margins (some tied) and token counts; 'needle' in 7 prompts."""
    rng = np.random.default_rng(3)
    pairs, cands = [], []
    for lang in LANGS:
        for i in range(N_PER_LANG):
            pid = f"p{i:03d}"
            m = float(np.round(rng.uniform(-0.5, 3.0), 1))  # one decimal: ties happen
            ct, rt = (int(x) for x in rng.integers(1, 60, 2))
            text = f"question {i} in {lang}" + (" with a Needle" if i % 10 == 3 else "")
            pairs.append({"prompt_id": pid, "lang": lang,
                          "prompt": [{"role": "user", "content": text}],
                          "chosen": [{"role": "assistant", "content": f"good {lang} {i}"}],
                          "rejected": [{"role": "assistant", "content": f"bad {lang} {i}"}],
                          "chosen_reward": m + 0.5, "rejected_reward": 0.5, "margin": m,
                          "chosen_tokens": ct, "rejected_tokens": rt, "chosen_sample_idx": 1,
                          "rejected_sample_idx": 0})  # fmt: skip
            for k, (reward, lid) in enumerate(((0.5, "en"), (m + 0.5, lang))):
                cands.append({"prompt_id": pid, "lang": lang, "instruction": text,
                              "scoring_prompt": text, "sample_idx": k,
                              "response": ("bad" if k == 0 else "good") + f" {lang} {i}",
                              "finish_reason": "stop", "response_tokens": rt if k == 0 else ct,
                              "reward": reward, "lid_lang": lid, "lid_score": 0.5 + 0.1 * k})  # fmt: skip
    root = tmp_path_factory.mktemp("store")
    write(root, pairs, cands, list(LANGS))
    return root, pl.DataFrame(pairs).with_row_index("row").with_columns(
        length_diff=pl.col("chosen_tokens") - pl.col("rejected_tokens")
    )


@pytest.fixture(scope="module")
def client(big):
    return TestClient(create_app(big[0]))


@pytest.mark.parametrize("params", [
    {},
    {"lang": "fr"},
    {"lang": "ru", "min_margin": "1.0", "max_margin": "2.0", "sort": "length_diff"},
    {"min_len_diff": "-5", "max_len_diff": "10", "order": "asc", "per_page": "9"},
    {"q": "needle", "sort": "margin", "order": "asc"},
])  # fmt: skip
@pytest.mark.parametrize("shallow", [2000, 5])  # partial sorts; every page from a kept order
def test_pages_filter_and_sort_like_polars(client, big, params, shallow, monkeypatch):
    monkeypatch.setattr(pairs_query, "SHALLOW", shallow)
    _, df = big
    want = df
    if params.get("lang"):
        want = want.filter(pl.col("lang") == params["lang"])
    for col, lo, hi in (("margin", "min_margin", "max_margin"),
                        ("length_diff", "min_len_diff", "max_len_diff")):  # fmt: skip
        if lo in params:
            want = want.filter(pl.col(col) >= float(params[lo]))
        if hi in params:
            want = want.filter(pl.col(col) <= float(params[hi]))
    if params.get("q"):
        want = want.filter(pl.col("prompt").list.last().struct.field("content")
                           .str.to_lowercase().str.contains(params["q"]))  # fmt: skip
    sort, desc = params.get("sort", "margin"), params.get("order", "desc") == "desc"
    want = want.sort([sort, "row"], descending=[desc, False])
    per = int(params.get("per_page", 25))
    seen_rows, seen_margins = [], []
    page, pages = 1, None
    while pages is None or page <= pages:
        r = client.get("/v/t/v1/pairs", params={**params, "page": page})
        assert r.status_code == 200, r.text[:500]
        assert int(attrs(r.text, "p", "data-total")[0]) == want.height
        pages = int(attrs(r.text, "span", "data-pages")[0])
        rows = [int(x) for x in attrs(r.text, "tr", "data-row")]
        assert 0 < len(rows) <= per or want.height == 0
        seen_rows += rows
        seen_margins += cells(r.text, "margin")
        page += 1
    assert pages == max(1, -(-want.height // per))
    assert seen_rows == want["row"].to_list()  # every matching pair once, in order, ties by row
    np.testing.assert_allclose(seen_margins, want["margin"].to_numpy(), atol=TOL)
    assert ('id="page-next"' in r.text) is False


def test_a_pair_row_shows_texts_rewards_tokens_and_language_ids(client, big):
    _, df = big
    r = client.get("/v/t/v1/pairs", params={"lang": "de", "sort": "length_diff", "per_page": 1})
    top = df.filter(pl.col("lang") == "de").sort(["length_diff", "row"],
                                                 descending=[True, False]).row(0, named=True)  # fmt: skip
    assert keys(r.text) == [(top["prompt_id"], "de", 1, 0)]
    assert f"good de {int(top['prompt_id'][1:])}" in r.text
    assert (
        f"{top['chosen_tokens']} tokens" in r.text and f"{top['rejected_tokens']} tokens" in r.text
    )
    # language ID joined from the candidates: the rejected sample was written as 'en', off-target
    assert re.search(r'class="lid off">en 0\.50<', r.text)
    assert re.search(r'class="lid">de 0\.60<', r.text)
    assert cells(r.text, "length-diff") == [top["length_diff"]]


def test_texts_read_only_the_row_groups_asked_for(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "v1" / "data" / "pairs"
    folder.mkdir(parents=True)
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "chosen": [{"role": "assistant", "content": f"c{i}"}],
             "rejected": [{"role": "assistant", "content": f"r{i}"}]} for i in range(50)]  # fmt: skip
    for part in (0, 1):  # two files of 25 rows, row groups of 7
        pq.write_table(pa.Table.from_pylist(rows[25 * part : 25 * part + 25]),
                       folder / f"train-{part}.parquet", row_group_size=7)  # fmt: skip
    got = pairs_query.texts(tmp_path / "v1", [49, 3, 27, 3, 13])
    assert got == {i: {"prompt": f"q{i}", "chosen": f"c{i}", "rejected": f"r{i}"}
                   for i in (3, 13, 27, 49)}  # fmt: skip


def test_the_text_cache_holds_every_row_as_the_parquet_files_do(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from icr_data.view.textcache import BATCH, TextCache

    monkeypatch.setenv("ICR_DATA_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "v1" / "data" / "pairs"
    folder.mkdir(parents=True)
    n = 2 * BATCH + 452
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "chosen": [{"role": "assistant", "content": f"c{i} " + "é" * (i % 7)}],
             "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": f"r{i}"}]}
            for i in range(n)]  # fmt: skip
    cut = 1500  # two files, row groups of 700: batches of the cache straddle both
    for k, part in enumerate((rows[:cut], rows[cut:])):
        pq.write_table(
            pa.Table.from_pylist(part), folder / f"train-{k}.parquet", row_group_size=700
        )
    cache = TextCache(tmp_path / "v1")
    assert cache.get([0]) is None  # not built yet
    cache.build()
    assert cache.path.parent == tmp_path / "cache" / "view"
    want = [0, BATCH - 1, BATCH, cut - 1, cut, 2 * BATCH, n - 1]
    got = cache.get(want)
    assert got == {i: {"prompt": f"q{i}", "chosen": f"c{i} " + "é" * (i % 7), "rejected": f"r{i}"}
                   for i in want}  # fmt: skip
    assert pairs_query.texts(tmp_path / "v1", want) == got  # the browser reads it once built
    assert not list((tmp_path / "v1").rglob("*.arrow"))  # nothing written in the version


def test_a_text_search_finds_in_the_text_cache_what_it_finds_in_the_parquet_files(
    tmp_path, monkeypatch
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from icr_data.view import textcache

    monkeypatch.setenv("ICR_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pairs_query, "CACHE_FROM", 1)  # a small version gets its cache too
    monkeypatch.setattr(textcache, "SCAN", 2)  # a search in several steps: rows counted across
    words = ["Needle", "NEEDLE in", "a nEeDlE", "ÉTÉ", "été", "a.b", "axb", "(x)", "[y", "Straße"]

    def said(role: str, i: int, k: int) -> list[dict]:  # the last message is the text
        return [{"role": "user", "content": "x"},
                {"role": role, "content": f"{words[(i * k) % len(words)]} {i}"}]  # fmt: skip

    n = 5 * textcache.BATCH + 77
    rows = [{"prompt": said("user", i, 1), "chosen": said("assistant", i, 3),
             "rejected": [] if i % 17 == 0 else said("assistant", i, 7)} for i in range(n)]  # fmt: skip
    rows[5]["chosen"][-1]["content"] = None
    folder = tmp_path / "v1" / "data" / "pairs"
    folder.mkdir(parents=True)
    for k, part in enumerate((rows[:2000], rows[2000:])):
        pq.write_table(
            pa.Table.from_pylist(part), folder / f"train-{k}.parquet", row_group_size=900
        )

    def want(q: str) -> list[int]:  # case folded, literally
        return [i for i, r in enumerate(rows) if any(q.lower() in (m[-1]["content"] or "").lower()
                for m in (r["prompt"], r["chosen"], r["rejected"]) if m)]  # fmt: skip

    version = tmp_path / "v1"
    queries = ["needle", "NEEDLE", "É", "é", "a.b", "(x)", "[y", "straße", "in 4", "zz"]
    parquet = {q: pairs_query.search(version, q) for q in queries}
    assert {q: got.to_list() for q, got in parquet.items()} == {q: want(q) for q in queries}
    cache = textcache.TextCache(version)
    assert not cache.ready()
    pairs_query.texts(version, [0])  # starts the cache's build (CACHE_FROM), on a thread
    textcache._building[cache.key].join()
    assert cache.ready()
    monkeypatch.setattr(pl, "scan_parquet", None)  # from here a search cannot read the Parquet
    for q in queries:
        cached = pairs_query.search(version, q)
        assert cached.to_list() == parquet[q].to_list() and cached.dtype == parquet[q].dtype, q


@pytest.mark.parametrize("params, bad", [({"min_margin": "x"}, "min_margin"),
                                         ({"sort": "reward"}, "sort"), ({"page": "0"}, "page"),
                                         ({"max_len_diff": "nan"}, "max_len_diff")])  # fmt: skip
def test_a_bad_parameter_is_a_400_naming_it(client, params, bad):
    r = client.get("/v/t/v1/pairs", params=params)
    assert r.status_code == 400 and bad in r.text


@pytest.mark.parametrize("url", [
    "/v/t/v9", "/v/t/v1/prompt?prompt_id=nope&lang=de", "/v/../v1", "/v/t/..", "/v/.t/v1",
    "/v/t/v1%2F..%2F..", "/v/%2e%2e/v1/pairs", "/diff?a=../../etc&b=t/v1",
    "/diff?a=/etc/passwd&b=t/v1", "/diff?a=t/v1/..&b=t/v1", "/static/../app.py",
    "/static/..%2Fapp.py", "/v/t/v1/.local.json", "/v/t/v1/manifest.json", "/nothing",
])  # fmt: skip
def test_names_outside_the_store_and_unknown_versions_are_404(client, url):
    r = client.get(url)
    assert r.status_code == 404, (url, r.text[:300])
    assert 'id="error" data-status="404"' in r.text


def test_store_version_and_diff_pages_against_the_manifests(big, tmp_path):
    root, df = big
    other = [{**r, "margin": r["margin"] + 1.0, "chosen_reward": r["chosen_reward"] + 1.0}
             for r in df.drop("row", "length_diff").to_dicts() if r["lang"] != "ru"]  # fmt: skip
    cands = pl.read_parquet(store.config_files(root / "t" / "v1", "candidates")).to_dicts()
    v2 = write(root, other, [c for c in cands if c["lang"] != "ru"], ["de", "fr"], name="v2")
    c = TestClient(create_app(root))
    page = c.get("/").text
    assert attrs(page, "tr", "data-version")[:2] == ["t/v1", "t/v2"]
    assert re.search(r'data-lang="fr" data-pairs="70">fr 70/140/70<', page)
    m1 = store.read_manifest(root / "t" / "v1")
    page = c.get("/v/t/v1").text
    assert cells(page, "pairs") == [m1["counts"][lang]["pairs"] for lang in LANGS]
    assert cells(page, "candidates") == [140, 140, 140]
    np.testing.assert_allclose(cells(page, "margin-mean"),
                               [m1["margins"][lang]["mean"] for lang in LANGS], atol=TOL)  # fmt: skip
    totals = attrs(page, "svg", "data-total")  # one histogram per language: its pairs
    assert totals == ["70", "70", "70"]
    counts = [list(map(int, x.split(","))) for x in attrs(page, "svg", "data-counts")]
    edges = np.linspace(df["margin"].min(), df["margin"].max(), 25)
    for lang, got in zip(LANGS, counts):
        want, _ = np.histogram(df.filter(pl.col("lang") == lang)["margin"].to_numpy(), edges)
        assert got == want.tolist()
    assert attrs(page, "svg", "data-points") == ["140", "140", "140"]  # candidates per scatter
    page = c.get("/diff", params={"a": "t/v1", "b": "t/v2"}).text
    assert attrs(page, "tr", "data-lang")[:3] == ["de", "fr", "ru"]
    np.testing.assert_allclose(cells(page, "mean-delta")[:2], [1.0, 1.0], atol=1e-9)
    assert attrs(page, "svg", "data-totals")[:2] == ["70,70", "70,70"]
    assert v2.name == "v2"


# -------------------------------------------------------------- filters, as the pair stage sees
def _cand(pid, lang, k, text, reward, lid=None, finish="stop"):
    return {"prompt_id": pid, "lang": lang, "instruction": f"{pid} {lang}", "scoring_prompt": pid,
            "sample_idx": k, "response": text, "finish_reason": finish,
            "response_tokens": len(text.split()) + 1, "reward": reward,
            "lid_lang": lid or lang, "lid_score": 0.9}  # fmt: skip


FILTER_CASES = [  # (prompt, lang, sample, text, reward, lid, finish, the filter that drops it)
    ("p1", "de", 0, "hallo welt eins", 0.5, None, "stop", None),
    ("p1", "de", 1, "   ", 0.9, None, "stop", "empty"),
    ("p1", "de", 2, "Hallo  welt EINS", 0.7, None, "stop", "duplicate"),
    ("p1", "de", 3, "x y x y x y x y x y x y", 0.8, None, "stop", "repetition"),
    ("p1", "de", 4, "bonjour le monde", 0.9, "fr", "stop", "off_target"),
    ("p1", "de", 5, "abgeschnitten", 0.9, None, "length", "truncated"),
    ("p1", "de", 6, "guten tag zusammen allerseits", 0.1, None, "stop", None),
    ("p2", "de", 0, "nur eine", 0.3, None, "stop", None),
    ("p2", "de", 1, "nur zwei", 0.2, None, "length", "truncated"),
    ("p3", "fr", 0, "un deux trois", 0.4, None, "length", "truncated"),
    ("p3", "fr", 1, "Un deux  trois", 0.6, None, "stop", None),  # its twin was dropped first
    ("p3", "fr", 2, "quatre cinq", -0.2, None, "stop", None),
    ("p3", "fr", 3, "six", 0.1, "de", "stop", "off_target"),
]


def test_the_prompt_page_tells_why_each_candidate_was_dropped_as_the_funnel_counts(tmp_path):
    rows = [_cand(p, lg, k, t, r, lid, fin) for p, lg, k, t, r, lid, fin, _ in FILTER_CASES]
    version = write(tmp_path, None, rows, ["de", "fr"])
    manifest = store.read_manifest(version)
    c = TestClient(create_app(tmp_path))
    found: dict[str, dict[str, int]] = {}
    pairs = pl.read_parquet(store.config_files(version, "pairs"))
    for pid, lang in (("p1", "de"), ("p2", "de"), ("p3", "fr")):
        r = c.get("/v/t/v1/prompt", params={"prompt_id": pid, "lang": lang})
        assert r.status_code == 200, r.text[:400]
        filtered = attrs(r.text, "tr", "data-filtered")
        want = [why or "" for p, lg, *_, why in FILTER_CASES if (p, lg) == (pid, lang)]
        assert filtered == want
        for why in filter(None, filtered):
            found.setdefault(lang, {})[why] = found.setdefault(lang, {}).get(why, 0) + 1
        roles = dict(zip(map(int, attrs(r.text, "tr", "data-sample-idx")),
                         attrs(r.text, "tr", "data-roles")))  # fmt: skip
        mine = pairs.filter((pl.col("prompt_id") == pid) & (pl.col("lang") == lang))
        for p in mine.iter_rows(named=True):
            assert "chosen" in roles[p["chosen_sample_idx"]].split()
            assert "rejected" in roles[p["rejected_sample_idx"]].split()
        assert ('id="why-no-pair"' in r.text) == mine.is_empty()
    for lang in ("de", "fr"):
        assert found[lang] == manifest["funnel"][lang]["dropped_candidates"]
    assert manifest["funnel"]["de"]["prompts_without_pair"] == {"fewer_than_two_kept": 1}


def test_a_damaged_version_is_an_error_page_naming_the_file(tmp_path):
    from synthetic import tables

    t, m = tables()
    v = store.write_version(tmp_path, "t", t, m, render_card)
    f = store.config_files(v, "pairs")[0]
    f.write_bytes(f.read_bytes()[:-20])  # the footer gone
    c = TestClient(create_app(tmp_path))
    for url in ("/v/t/v1", "/v/t/v1/pairs", "/diff?a=t/v1&b=t/v1"):
        r = c.get(url)
        assert r.status_code == 500 and f.name in r.text and "damaged or truncated" in r.text
    assert c.get("/").status_code == 200  # the store page still lists it


# --------------------------------------------------------------- the tiny demo build, end to end
@pytest.fixture(scope="module")
def tiny(build_tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyview") / "store"
    v1 = build_tiny(root, "sampling.max_tokens=8", "prompts.limit=3", "prompts.languages=[en, de, fr]")  # fmt: skip
    return root, v1


def test_the_demo_versions_pages_show_its_manifest_and_why_each_pair_was_chosen(tiny, tiny_pair):
    root, v1 = tiny
    m = store.read_manifest(v1)
    langs = list(m["counts"])
    c = TestClient(create_app(root))
    pages = {"/": c.get("/").text, "/v": c.get("/v/demo-tiny/v1").text}
    page = pages["/v"]
    for col, key in (("prompts", "prompts"), ("candidates", "candidates"), ("kept", "kept_candidates"),
                     ("pairs", "pairs")):  # fmt: skip
        assert cells(page, col) == [m["funnel"][lang][key] for lang in langs]
    np.testing.assert_allclose(cells(page, "alpha"), [m["pairing"]["alphas"][x] for x in langs])
    assert attrs(page, "svg", "data-total") == [str(m["counts"][x]["pairs"]) for x in langs]
    assert attrs(page, "svg", "data-points") == [str(m["counts"][x]["candidates"]) for x in langs]
    slopes = [float(s) for s in attrs(page, "line", "data-slope")]
    assert sorted(set(slopes)) == sorted({0.0, *m["pairing"]["alphas"].values()})
    pairs = pl.read_parquet(store.config_files(v1, "pairs"))
    r = c.get("/v/demo-tiny/v1/pairs", params={"per_page": 200, "sort": "margin", "order": "asc"})
    assert int(attrs(r.text, "p", "data-total")[0]) == m["totals"]["pairs"] == pairs.height
    np.testing.assert_allclose(cells(r.text, "margin"), np.sort(pairs["margin"].to_numpy()))
    for p in pairs.iter_rows(named=True):  # max_min after length control: the prompt page's
        url = "/v/demo-tiny/v1/prompt"  # scores must make the chosen the best of the kept
        page = c.get(url, params={"prompt_id": p["prompt_id"], "lang": p["lang"]}).text
        pages[url + p["prompt_id"] + p["lang"]] = page
        kept = [(int(i), a) for i, a, why in zip(attrs(page, "tr", "data-sample-idx"),
                                                 cells(page, "adjusted"), attrs(page, "tr", "data-filtered"))
                if not why]  # fmt: skip
        best = max(a for _, a in kept)
        worst = min(a for _, a in kept)
        score = dict(kept)
        assert score[p["chosen_sample_idx"]] == pytest.approx(best, abs=1e-9)
        assert score[p["rejected_sample_idx"]] == pytest.approx(worst, abs=1e-9)
        rewards = dict(zip(map(int, attrs(page, "tr", "data-sample-idx")), cells(page, "reward")))
        assert rewards[p["chosen_sample_idx"]] == pytest.approx(p["chosen_reward"], abs=1e-9)
    for page in pages.values():  # nothing of this machine's folders, nor the hidden local file
        assert str(root.parent) not in page and str(tiny_pair[0]) not in page
        assert ".local.json" not in page


def test_marked_pairs_become_a_curated_child_version(tiny):
    from synthetic import digest

    root, v1 = tiny
    before = digest(v1)
    c = TestClient(create_app(root), follow_redirects=False)
    first, second = keys(c.get("/v/demo-tiny/v1/pairs").text)[:2]

    def post(action, key=None, **extra):
        form = dict(
            zip(("prompt_id", "lang", "chosen_sample_idx", "rejected_sample_idx"), key or ())
        )
        return c.post("/v/demo-tiny/v1/marks", data={"action": action, **form, **extra})

    assert post("mark", first, reason="  ").status_code == 400  # a reason is needed
    r = post("mark", first, reason="wrong  language", next="/v/demo-tiny/v1/pairs?lang=de")
    assert r.status_code == 303 and r.headers["location"] == "/v/demo-tiny/v1/pairs?lang=de"
    r = post("mark", second, reason="x", next="//elsewhere.example/")
    assert r.headers["location"] == "/v/demo-tiny/v1"  # only this app's pages
    assert post("unmark", second).status_code == 303
    r = c.post("/v/demo-tiny/v1/write", headers={"origin": "http://elsewhere.example"})
    assert r.status_code == 403  # another site's page cannot post here
    page = c.get("/v/demo-tiny/v1").text
    assert attrs(page, "span", "data-count") == ["1"]
    assert [tuple(json.loads(k)) for k in attrs(page, "li", "data-pair-key")] == [first]
    r = c.post("/v/demo-tiny/v1/write", data={"name": "v7"})
    assert r.status_code == 303 and r.headers["location"] == "/v/demo-tiny/v7?dropped=1"
    child = root / "demo-tiny" / "v7"
    m = store.read_manifest(child)
    assert m["parent"] == "demo-tiny/v1"
    dropped = m["derived"]["dropped"]
    assert [(d["prompt_id"], d["lang"], d["chosen_sample_idx"], d["rejected_sample_idx"],
             d["reason"]) for d in dropped] == [(*first, "wrong language")]  # fmt: skip
    assert m["totals"]["pairs"] == store.read_manifest(v1)["totals"]["pairs"] - 1
    page = c.get(r.headers["location"]).text
    assert attrs(page, "p", "data-dropped") == ["1"] and first not in keys(page)
    assert digest(v1) == before  # the parent is never touched
    assert attrs(c.get("/v/demo-tiny/v1").text, "span", "data-count") == ["0"]  # marks written
    assert c.post("/v/demo-tiny/v1/write").status_code == 400  # nothing marked
    post("mark", ("no-such-prompt", "de", 0, 1), reason="x")
    r = c.post("/v/demo-tiny/v1/write")
    assert r.status_code == 400 and "no-such-prompt" in r.text
    assert store.versions(root / "demo-tiny") == ["v1", "v7"]  # nothing written


def test_the_cli_serves_on_a_free_port_and_stops_on_ctrl_c(big):
    import signal
    import subprocess
    import sys

    import httpx

    root, _ = big
    proc = subprocess.Popen([sys.executable, "-m", "icr_data.cli", "view", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), proc.stderr.read()
        assert httpx.get(url, timeout=30).status_code == 200
        r = httpx.get(url + "v/t/v1/pairs", params={"lang": "ru"}, timeout=30)
        assert r.status_code == 200 and int(attrs(r.text, "p", "data-total")[0]) == N_PER_LANG
        assert httpx.get(url + "v/t/v9", timeout=30).status_code == 404
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        proc.kill()
        proc.wait()


def test_a_port_in_use_or_a_missing_store_is_one_error_line(big, tmp_path, capsys):
    import socket

    from icr_data.cli import main

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(SystemExit) as e:
            main(["view", str(big[0]), "--port", str(port)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"--port {port}: cannot listen there" in err and err.count("error:") == 1
    with pytest.raises(SystemExit) as e:
        main(["view", str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "no such store folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------- records of a store
def test_an_eval_record_page_shows_each_judges_figures_and_the_answers(tmp_path):
    from icr_data.commands.winrates import summarize

    rows = []
    for judge, kind in (("llm:judge", "llm"), ("implicit:p,r", "implicit")):
        for lang in ("en", "de"):
            for i in range(5):
                ab, ba = ("A", "B") if i % 2 else ("B", "B")
                win = {"llm": 1.0 if i % 2 else 0.5, "implicit": float(i > 1)}[kind]
                rows.append({"judge": judge, "kind": kind, "prompt_id": f"q{i}", "lang": lang,
                             "instruction": f"ask {i} {lang}", "candidate": f"cand {judge} {lang} {i}",
                             "baseline": f"base {lang} {i}", "verdict_ab": ab if kind == "llm" else None,
                             "verdict_ba": ba if kind == "llm" else None, "win": win,
                             "consistent": bool(i % 2) if kind == "llm" else None,
                             "candidate_reward": None if kind == "llm" else 0.1 * i,
                             "baseline_reward": None if kind == "llm" else 0.2,
                             "candidate_chars": 10 + i, "baseline_chars": 12,
                             "candidate_lid": lang, "baseline_lid": "en", "in_training": False})  # fmt: skip
    results = summarize(rows)
    manifest = {"kind": "eval", "dataset": "ev", "version": None, "created": "2026-01-01",
                "models": {"candidate": {"name": "cand"}, "baseline": {"name": "base"}},
                "lineage": {"dataset": "t", "version": "v1"}, "languages": ["en", "de"],
                "results": results, "totals": {"prompts": 10, "rows": len(rows)}}  # fmt: skip
    store.write_version(
        tmp_path, "ev", {"rows": Dataset.from_list(rows)}, manifest, lambda m: "card"
    )
    c = TestClient(create_app(tmp_path))
    page = c.get("/").text
    assert attrs(page, "tr", "data-record") == ["ev/v1", "ev/v1"]
    assert f">{results['llm:judge']['de']['win_rate']:.2f} / " in page
    page = c.get("/v/ev/v1").text
    got = list(zip(attrs(page, "tr", "data-judge"), cells(page, "wr"), cells(page, "lc")))
    want = [
        (j, r["win_rate"], r["lc_win_rate"]) for j, langs in results.items() for r in langs.values()
    ]
    assert [g[0] for g in got] == [w[0] for w in want]
    np.testing.assert_allclose([g[1:] for g in got], [w[1:] for w in want], atol=TOL)
    np.testing.assert_allclose(cells(page, "consistency")[:2],
                               [results["llm:judge"][x]["position_consistency"] for x in ("en", "de")])  # fmt: skip
    assert int(attrs(page, "p", "data-total")[0]) == 20
    page = c.get("/v/ev/v1", params={"judge": "llm:judge", "lang": "de"}).text
    assert int(attrs(page, "p", "data-total")[0]) == 5
    assert re.search(r"cand llm:judge de 3</td>\s*<td[^>]*>.*base de 3</td>\s*<td class=\"verdicts\">"
                     r"A / B \(consistent\)", page, re.S)  # fmt: skip
    assert c.get("/v/ev/v1/pairs").status_code == 404  # a record has no pairs


def test_a_translated_prompts_version_is_shown_as_a_record(tmp_path):
    rows = Dataset.from_list([{"prompt_id": f"p{i}", "lang": lang, "instruction": f"{lang} {i}"}
                              for lang in ("en", "de") for i in range(3)])  # fmt: skip
    manifest = {"kind": "prompts", "dataset": "prompts", "version": None, "source": {"rows": 3},
                "languages": ["en", "de"], "counts": {"de": {"kept": 3, "failed": 0}},
                "totals": {"rows": 6}}  # fmt: skip
    store.write_version(tmp_path, "prompts", {"prompts": rows}, manifest, lambda m: "card")
    c = TestClient(create_app(tmp_path))
    assert 'data-version="prompts/v1"' in c.get("/").text
    page = c.get("/v/prompts/v1").text
    assert '<tr data-key="de"><td>de</td><td class="num">3</td>' in page
    assert "the first 6 of 6 rows" in page


def test_agreement_and_likely_noise_flags_are_on_the_version_page(big, tmp_path):
    from icr_data.stages.agreement import mode_agreement

    root, df = big
    cands = pl.read_parquet(store.config_files(root / "t" / "v1", "candidates")).to_dicts()
    ranked = [r["reward"] for r in cands]  # de agrees with itself; fr and ru reversed
    other = [x if r["lang"] == "de" else -x for r, x in zip(cands, ranked)]
    modes = mode_agreement(cands, ranked, other)
    judge = {"de": {"pairs": 70, "agree": 60, "rate": 60 / 70}, "fr": {"pairs": 70, "agree": 36,
             "rate": 36 / 70}}  # fmt: skip
    pairs = df.drop("row", "length_diff").to_dicts()
    write(tmp_path, pairs, cands, list(LANGS), modes=modes, judge=judge)
    page = TestClient(create_app(tmp_path)).get("/v/t/v1").text
    flags = dict(zip(attrs(page, "tr", "data-lang")[-3:], attrs(page, "tr", "data-noise")))
    assert flags == {"de": "no", "fr": "yes", "ru": "yes"}
    assert ">60/70<" in page and ">36/70<" in page
    warned = re.findall(r'class="warning noise" data-lang="(\w+)"', page)
    assert set(warned) == {"fr", "ru"}  # a warning line per reason a language is flagged


def test_small_alphas_and_record_figures_show_significant_digits_not_zeros(big, tmp_path):
    root, df = big
    cands = pl.read_parquet(store.config_files(root / "t" / "v1", "candidates")).to_dicts()
    alphas = {"de": 0.00042, "fr": 0.0, "ru": 0.0123}
    write(tmp_path, df.drop("row", "length_diff").to_dicts(), cands, list(LANGS), alphas=alphas)
    c = TestClient(create_app(tmp_path))
    page = c.get("/v/t/v1").text
    np.testing.assert_allclose(cells(page, "alpha"), list(alphas.values()))
    shown = re.findall(r'<td class="num alpha" data-value="[^"]*">([^<]*)</td>', page)
    assert shown == ["0.00042", "0", "0.0123"]
    assert "alpha 0.00042;" in page  # beside the reward-length chart
    page = c.get("/v/t/v1/prompt", params={"prompt_id": "p003", "lang": "de"}).text
    assert "with alpha 0.00042 " in page
    rows = Dataset.from_list([{"prompt_id": "p0", "lang": "de", "instruction": "de 0"}])
    manifest = {"kind": "prompts", "dataset": "prompts", "version": None, "source": {"rows": 1},
                "languages": ["de"], "counts": {"de": {"kept": 1, "rate": 0.000123, "mean": 2.5}},
                "totals": {"rows": 1}}  # fmt: skip
    store.write_version(tmp_path, "prompts", {"prompts": rows}, manifest, lambda m: "card")
    page = c.get("/v/prompts/v1").text
    assert '<td class="num">0.000123</td><td class="num">2.5</td>' in page


def test_a_curated_versions_pages_say_which_pairs_were_dropped_by_hand_and_why(tiny, tmp_path):
    import shutil

    from icr_data.commands.curate import drop_pairs

    root = tmp_path / "store"
    shutil.copytree(tiny[0], root)
    v1 = root / "demo-tiny" / "v1"
    first, second = pl.read_parquet(store.config_files(v1, "pairs")).head(2).iter_rows(named=True)
    k1, k2 = pairs_query.pair_key(first), pairs_query.pair_key(second)
    child, _ = drop_pairs(v1, {k1: "off target"}, "v2")
    drop_pairs(child, {k2: "too short"}, "v3")  # a curated child of a curated child
    c = TestClient(create_app(root))
    page = c.get("/v/demo-tiny/v3").text
    assert [tuple(json.loads(k)) for k in attrs(page, "tr", "data-dropped-key")] == [k2]
    assert re.findall(r'<td class="reason">([^<]*)</td>', page) == ["too short"]
    for key, said in ((k1, "demo-tiny/v2: off target"), (k2, "demo-tiny/v3: too short")):
        params = {"prompt_id": key[0], "lang": key[1]}
        page = c.get("/v/demo-tiny/v3/prompt", params=params).text
        why = re.search(r'<p id="why-no-pair"[^>]*>([^<]*)</p>', page).group(1)
        assert why == f"No pair from this prompt: dropped by hand ({said})."
        assert keys(page) == []  # no pair of this prompt is left
    page = c.get("/v/demo-tiny/v1/prompt", params={"prompt_id": k1[0], "lang": k1[1]}).text
    assert 'id="why-no-pair"' not in page and keys(page) == [k1]  # the parent keeps its pair
