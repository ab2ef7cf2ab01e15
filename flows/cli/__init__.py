"""The `horse` command line (DESIGN.md §7).

Every command prints human output by default and exactly one JSON document on stdout with
`--json`. Exit codes: 0 all good, 1 some shots (or checks) failed, 2 invalid input or
configuration. Commands live in modules by group; `command.py` holds what they share.
"""

from flows.cli.command import set_library_defaults

set_library_defaults()  # before any command imports Prefect or Ray

import typer  # noqa: E402

from flows.cli import adapters, campaigns, demo, maintain, manifests, operations, qc, runs  # noqa: E402

app = typer.Typer(
    name="horse",
    help="Batch rendering for Happy Horse 1.0 campaigns: Prefect flows, Ray GPU actors, versioned storage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _group() -> None:
    """Batch rendering for Happy Horse 1.0 campaigns."""


app.add_typer(demo.app)
app.add_typer(manifests.app, name="manifest")
app.add_typer(adapters.app, name="adapter")
for group in (runs, campaigns, qc, operations, maintain):
    app.add_typer(group.app)


def main() -> None:
    app()
