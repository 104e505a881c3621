"""The `icr-data` command line. It parses options and calls the stage functions; heavy imports
(torch, vLLM, datasets) happen inside the commands so `icr-data --help` starts instantly.

    icr-data build recipes/demo.yaml --store icr_store --set sampling.n=4
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Build multilingual preference datasets from an English implicit reward "
    "(implicit cross-lingual rewarding).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


@app.callback()
def _group() -> None:
    """Stages: prompts -> generate (vLLM) -> score (policy/reference log-probs) -> pairs -> version."""


def summary_table(manifest: dict) -> Table:
    table = Table(title=f"{manifest['dataset']} {manifest['version']}")
    for col in ("lang", "prompts", "candidates", "pairs", "margin mean", "margin median", "alpha"):
        table.add_column(col, justify="left" if col == "lang" else "right")

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for lang, c in manifest["counts"].items():
        q = manifest["margins"][lang]
        alpha = manifest["pairing"]["alphas"].get(lang)
        table.add_row(lang, str(c["prompts"]), str(c["candidates"]), str(c["pairs"]),
                      fmt(q["mean"]), fmt(q["median"]), fmt(alpha))  # fmt: skip
    return table


@app.command()
def build(
    recipe: Annotated[Path, typer.Argument(help="YAML build recipe, e.g. recipes/demo.yaml.")],
    store: Annotated[
        str | None, typer.Option(help="Store folder for versions (overrides the recipe's 'store').")
    ] = None,
    version: Annotated[
        str | None, typer.Option(help="Name the new version (default: the next free vN).")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, e.g. --set sampling.n=4 (repeatable)."),
    ] = None,
) -> None:
    """Run every stage of RECIPE (prompts, vLLM generation, dual-logit scoring, pairing) and
    write a new immutable dataset version with its card. Prints the version's path."""
    from icr_data.config import RecipeError, load_recipe

    overrides = list(set_ or [])
    if store is not None:
        overrides.append(f"store={store}")
    try:
        cfg = load_recipe(recipe, overrides)
    except RecipeError as e:
        _fail(str(e))
    if version is not None and (Path(cfg.store) / cfg.dataset / version).exists():
        _fail(
            f"version {version} already exists in {Path(cfg.store) / cfg.dataset}; versions are immutable"
        )

    from icr_data.build import build as run_build

    try:
        path, manifest = run_build(cfg, console=err, version=version)
    except _user_errors() as e:
        _fail(str(e))
    err.print(summary_table(manifest))
    err.print(f"[green]wrote[/] {path}")
    print(path)


def _user_errors() -> tuple[type[BaseException], ...]:
    from icr_data.chat import TemplateError
    from icr_data.models import ModelError
    from icr_data.prompts import PromptError
    from icr_data.store import StoreError

    return (PromptError, ModelError, StoreError, TemplateError)


def _fail(message: str) -> None:
    err.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def main() -> None:
    app(prog_name="icr-data")


if __name__ == "__main__":
    sys.exit(main())
