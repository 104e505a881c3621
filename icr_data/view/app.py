"""The web app of `icr-data view`: Starlette routes over one store, pages rendered on the server
with Jinja2 (templates/), served by uvicorn. Read-only over versions; the one write is a curated
child version through commands.curate.drop_pairs.

    icr-data view icr_store [--host 127.0.0.1] [--port 0]     # prints http://127.0.0.1:PORT/
    app = create_app(Path("icr_store"))                        # for a test client

Routes:
    GET  /                                      the store page
    GET  /v/{dataset}/{version}                 a version's dashboard (an eval record's page for
                                                an eval record: ?judge=&lang=&page=)
    GET  /v/{dataset}/{version}/pairs           pairs browser (pairs_query.PairQuery parameters)
    GET  /v/{dataset}/{version}/prompt          ?prompt_id=&lang=: every candidate of a prompt
    GET  /diff?a=dataset/vN&b=dataset/vM        two versions side by side
    POST /v/{dataset}/{version}/marks           action=mark|unmark|clear, the pair's key fields,
                                                reason, next (a path of this app to return to)
    POST /v/{dataset}/{version}/write           name (optional vN): write the marked drops as a
                                                child version, then show it (?dropped=N)
    GET  /static/...                            view.css, view.js (package data)

Marks (pairs to drop, with a reason) are kept in this process's memory per version, never in a
version folder; writing them clears them. Everything else is a GET that reads. A name that is
not a dataset or version of the store (`..`, a path) is a 404, as is an unknown version; a
damaged version (integrity.check) is a 500 page naming the damaged file; a bad parameter is a
400 page naming it; a form posted from another site's page (its Origin header is not this
server) is a 403.
"""

from __future__ import annotations

import json
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from icr_data.base.errors import IcrError
from icr_data.view import pairs_query as pq
from icr_data.view import queries as q
from icr_data.view.charts import funnel, histogram, overlaid, scatter

STATIC = Path(__file__).resolve().parent / "static"
EVAL_PER_PAGE = 20
Key = tuple[str, str, int, int]


class Marks:
    """Pairs marked to drop, per version folder: {key: reason}, in the order they were marked."""

    def __init__(self) -> None:
        self._marks: dict[str, OrderedDict[Key, str]] = {}
        self._lock = threading.Lock()

    def of(self, version: Path) -> dict[Key, str]:
        with self._lock:
            return dict(self._marks.get(str(version), {}))

    def set(self, version: Path, key: Key, reason: str | None) -> None:
        with self._lock:
            mine = self._marks.setdefault(str(version), OrderedDict())
            if reason is None:
                mine.pop(key, None)
            else:
                mine[key] = reason

    def clear(self, version: Path) -> None:
        with self._lock:
            self._marks.pop(str(version), None)


def _fmt(value, spec: str = ".3f") -> str:
    if value is None or isinstance(value, Undefined):
        return "-"
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def templates() -> Jinja2Templates:
    env = Environment(loader=PackageLoader("icr_data.view", "templates"),
                      autoescape=select_autoescape(["html"]))  # fmt: skip
    env.filters["fmt"] = _fmt
    env.filters["keyjson"] = lambda key: json.dumps(list(key), ensure_ascii=False)
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.globals.update(histogram=histogram, overlaid=overlaid, scatter=scatter, funnel=funnel)
    return Jinja2Templates(env=env)


def create_app(root: Path) -> Starlette:
    """The app over the store folder `root`."""
    root = Path(root).resolve()
    pages = templates()
    marks = Marks()

    def render(request: Request, name: str, status: int = 200, **context):
        context.setdefault("title", "icr-data view")
        return pages.TemplateResponse(request, name, {"store": root.name, **context},
                                      status_code=status)  # fmt: skip

    def store_page(request: Request):
        return render(request, "store.html", summary=q.store_summary(root), title="store")

    def version_page(request: Request):
        ds, v = request.path_params["dataset"], request.path_params["version"]
        path, manifest = q.open_version(root, ds, v)
        if manifest.get("kind") == "eval":
            return eval_page(request, path, manifest)
        if manifest.get("kind", "data") != "data":  # translated prompts, a reward check, ...
            return render(request, "record.html", m=manifest, r=q.record_view(path, manifest),
                          ref=f"{ds}/{v}", title=f"{ds}/{v}")  # fmt: skip
        written = request.query_params.get("dropped")
        pq.warm(path, (manifest.get("totals") or {}).get("pairs"))  # before the pairs are asked for
        return render(request, "version.html", m=manifest, d=q.dashboard(path, manifest),
                      ref=f"{ds}/{v}", marks=marks.of(path), written=written,
                      title=f"{ds}/{v}")  # fmt: skip

    def eval_page(request: Request, path: Path, manifest):
        judge = request.query_params.get("judge") or None
        lang = request.query_params.get("lang") or None
        page = _int(request.query_params.get("page"), "page", 1)
        rows = q.eval_rows(path, judge, lang, page, EVAL_PER_PAGE)
        ref = f"{manifest['dataset']}/{manifest['version']}"
        return render(request, "eval.html", m=manifest, rows=rows, judge=judge, lang_sel=lang,
                      page=page, pages=max(1, -(-rows["total"] // EVAL_PER_PAGE)), ref=ref,
                      title=ref)  # fmt: skip

    def pairs_page(request: Request):
        ds, v = request.path_params["dataset"], request.path_params["version"]
        path, manifest = q.open_version(root, ds, v)
        _dataset_only(manifest, ds, v)
        query = pq.PairQuery.parse(request.query_params)
        return render(request, "pairs.html", m=manifest, ref=f"{ds}/{v}", query=query,
                      page=pq.pairs_page(path, query), marks=marks.of(path),
                      next=request.url.path + ("?" + request.url.query if request.url.query else ""),
                      title=f"{ds}/{v} pairs")  # fmt: skip

    def prompt_page(request: Request):
        ds, v = request.path_params["dataset"], request.path_params["version"]
        path, manifest = q.open_version(root, ds, v)
        _dataset_only(manifest, ds, v)
        pid = request.query_params.get("prompt_id") or ""
        lang = request.query_params.get("lang") or ""
        if not pid or not lang:
            raise q.ViewError("prompt_id and lang are both needed")
        view = pq.prompt_view(path, manifest, pid, lang)
        return render(request, "prompt.html", m=manifest, ref=f"{ds}/{v}", p=view,
                      marks=marks.of(path),
                      next=request.url.path + "?" + request.url.query,
                      title=f"{ds}/{v} {pid} {lang}")  # fmt: skip

    def diff_page(request: Request):
        a = request.query_params.get("a") or ""
        b = request.query_params.get("b") or ""
        path_a, _ = q.open_version(root, *q.parse_ref(a, "a"))
        path_b, _ = q.open_version(root, *q.parse_ref(b, "b"))
        return render(request, "diff.html", d=q.diff(path_a, path_b), a=a, b=b,
                      title=f"{a} vs {b}")  # fmt: skip

    async def mark(request: Request):
        ds, v = request.path_params["dataset"], request.path_params["version"]
        path = q.version_dir(root, ds, v)
        form = await _form(request)
        action = form.get("action", "mark")
        if action == "clear":
            marks.clear(path)
        elif action in ("mark", "unmark"):
            key = _key(form)
            reason = " ".join(form.get("reason", "").split())
            if action == "mark" and not reason:
                raise q.ViewError("reason: say why this pair is dropped")
            marks.set(path, key, reason if action == "mark" else None)
        else:
            raise q.ViewError(f"action: {action[:20]!r} is not mark, unmark or clear")
        return RedirectResponse(_next(form.get("next"), f"/v/{ds}/{v}"), status_code=303)

    async def write(request: Request):
        ds, v = request.path_params["dataset"], request.path_params["version"]
        path = q.version_dir(root, ds, v)
        form = await _form(request)
        drops = marks.of(path)
        if not drops:
            raise q.ViewError("no pairs are marked to drop: mark pairs on the pairs or prompt "
                              "pages first")  # fmt: skip
        name = form.get("name", "").strip() or None
        from icr_data.commands.curate import drop_pairs

        child, _ = await run_in_threadpool(drop_pairs, path, drops, name)
        for key in drops:  # written: these marks are done with
            marks.set(path, key, None)
        child = Path(child)
        return RedirectResponse(f"/v/{quote(child.parent.name)}/{quote(child.name)}?dropped="
                                f"{len(drops)}", status_code=303)  # fmt: skip

    async def view_error(request: Request, exc: Exception):
        status = exc.status if isinstance(exc, q.ViewError) else 400
        problems = getattr(exc, "problems", None) or [str(exc)]
        return render(request, "error.html", status, code=status, message=str(exc),
                      problems=problems, title=f"error {status}")  # fmt: skip

    async def http_error(request: Request, exc: HTTPException):
        message = "no such page in this store's view" if exc.status_code == 404 else exc.detail
        return render(request, "error.html", exc.status_code, code=exc.status_code,
                      message=message, problems=[message], title=f"error {exc.status_code}")  # fmt: skip

    routes = [
        Route("/", store_page),
        Route("/diff", diff_page),
        Route("/v/{dataset}/{version}", version_page),
        Route("/v/{dataset}/{version}/pairs", pairs_page),
        Route("/v/{dataset}/{version}/prompt", prompt_page),
        Route("/v/{dataset}/{version}/marks", mark, methods=["POST"]),
        Route("/v/{dataset}/{version}/write", write, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={IcrError: view_error,
                                                        HTTPException: http_error})  # fmt: skip


def _dataset_only(manifest, ds: str, v: str) -> None:
    if manifest.get("kind", "data") != "data":
        raise q.NotFound(f"{ds}/{v} is a record of kind {manifest['kind']!r}: it has no pairs")


def _int(raw: str | None, name: str, default: int) -> int:
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise q.ViewError(f"{name}: {raw[:40]!r} is not a whole number") from None
    if value < 1:
        raise q.ViewError(f"{name} must be >= 1")
    return value


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the last value of each). A form posted from a page of
    another site (its Origin is not this server) is refused: no web page can mark pairs or
    write versions through a browser that has this view open."""
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        raise q.Forbidden(f"a form from {origin[:80]} is not this view's; refused")
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _key(form: dict[str, str]) -> Key:
    pid, lang = form.get("prompt_id", ""), form.get("lang", "")
    if not pid or not lang:
        raise q.ViewError("a pair is named by prompt_id, lang, chosen_sample_idx and "
                          "rejected_sample_idx")  # fmt: skip
    return (pid, lang, _index(form, "chosen_sample_idx"), _index(form, "rejected_sample_idx"))


def _index(form: dict[str, str], name: str) -> int:
    try:
        return int(form.get(name, ""))
    except ValueError:
        raise q.ViewError(f"{name}: {form.get(name, '')[:20]!r} is not a whole number") from None


def _next(target: str | None, default: str) -> str:
    """A page of this app to return to: a path (never another host or scheme)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    return target


def serve(store_dir: str | Path, host: str = "127.0.0.1", port: int = 0, announce=print) -> None:
    """Serve the view of `store_dir` until interrupted; `announce` gets the URL once listening.
    Port 0: a free port, bound here (no race with another program taking it)."""
    import uvicorn

    root = Path(store_dir)
    if not root.is_dir():
        raise q.ViewError(f"{store_dir}: no such store folder")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise q.ViewError(f"--host {host} --port {port}: cannot listen there "
                          f"({e.strerror or e})") from None  # fmt: skip
    bound = sock.getsockname()[1]
    config = uvicorn.Config(create_app(root), log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    shown = f"[{host}]" if ":" in host else host
    announce(f"http://{shown}:{bound}/")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
