"""Looking back at a model: `edgecnn report`, one self-contained HTML page of everything its folder
holds (data, curves, confusion matrix, mistakes, exports, profile, tuning). A thin command over
`edgecnn.report`.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from edgecnn.cli.common import echo, print_json, user_errors
from edgecnn.cli.options import argument, option
from edgecnn.errors import EdgecnnError


def report(
    ctx: typer.Context,
    model_dir: Annotated[
        Path,
        argument(
            metavar="MODEL_DIR",
            help="A model folder (models/NAME/ with metadata.json; exports, profile.json and deploy.json are shown "
            "when present).",
        ),
    ],
    out: Annotated[Optional[Path], option(help="The HTML file to write. Default: MODEL_DIR/report.html.")] = None,
    profile: Annotated[
        Optional[Path],
        option(help="A profile JSON (edgecnn profile ... --json FILE). Default: MODEL_DIR/profile.json when present."),
    ] = None,
    max_images: Annotated[
        int,
        option(
            help="Most misclassified validation images shown as thumbnails, most confident mistakes first. Default: 60."
        ),
    ] = 60,
    open_browser: Annotated[bool, option("--open", help="Open the report in the default web browser.")] = False,
    as_json: Annotated[bool, option("--json", help="Print what the report shows as JSON (for scripts).")] = False,
):
    """Write one self-contained HTML page: data, curves, confusion matrix, mistakes, exports, profile, tuning."""
    with user_errors(ctx):
        from edgecnn.report import ReportConfig, write_report

        result = write_report(
            ReportConfig(
                model_dir=str(model_dir),
                out=str(out) if out else None,
                profile=str(profile) if profile else None,
                max_thumbnails=max_images,
            )
        )
        if as_json:
            print_json(result.to_dict())
        else:
            if result.verdict is not None:
                learned = result.verdict.learned
                echo(f"training {result.verdict.summary()}", color=None if learned else "red")
            for title, command in result.missing.items():
                echo(f"no {title.lower()} yet: {command}")
            echo(
                f"wrote {result.path} ({result.size_bytes / 1e3:.0f} kB, {result.thumbnails} misclassified images shown)"
            )
        if open_browser:
            import webbrowser

            if not webbrowser.open(result.path.resolve().as_uri()):
                raise EdgecnnError(f"no web browser to open {result.path}; open the file yourself")
