"""``nucleiseg models``, ``nucleiseg export`` and ``nucleiseg export-onnx``: the ready models, and a model written
for other tools."""

from __future__ import annotations

import argparse
import json

from nucleiseg.cli.common import WORDS_HELP, UsageError, add_command, add_model_option, overrides_only
from nucleiseg.predict.model_sources import resolve_model  # light: its heavy imports are inside


def _export(args: argparse.Namespace) -> int:
    from nucleiseg.inference.export_model import export_model

    overrides = overrides_only(args, "export", allowed="--model, --format, --out and KEY=VALUE overrides")
    model, _ = resolve_model(args.model, args.run_id, overrides)
    print(json.dumps(export_model(model, args.format, args.out, image_size=args.image_size), indent=1))
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from nucleiseg.inference.onnx_export import export_onnx

    result = export_onnx(args.checkpoint, args.out, image_size=args.image_size, check=not args.no_check)
    print(json.dumps(result, indent=1))
    return 0


def _models(args: argparse.Namespace) -> int:
    from nucleiseg.models.zoo import PRETRAINED, describe_models, registry

    if args.card:
        _, entries = registry()
        if args.card not in entries:
            raise UsageError(f"--card {args.card}: no such model; known: {', '.join(sorted(entries))}")
        entry = entries[args.card]
        print((PRETRAINED / entry.card).read_text() if entry.card else entry.description)
        return 0
    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.table import Table

    from nucleiseg.util.console import make_console

    table = Table()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    console = make_console()
    console.print("nucleiseg models (nucleiseg models --card NAME for one model's card)")
    console.print(table)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """``models`` and ``export``."""
    models = add_command(
        commands,
        "models",
        "the ready models: resolution, head, size, licence and headline metrics",
        "  nucleiseg models\n  nucleiseg models --card default",
    )
    models.add_argument("--card", default=None, metavar="NAME", help="print this model's card")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_models)

    export = add_command(
        commands,
        "export",
        "a model for other tools (QuPath, ONNX Runtime, DJL), checked against nucleiseg's probabilities",
        "  nucleiseg export --model default --format torchscript --out nuclei.pt\n"
        "  nucleiseg export --model CKPT --format onnx --out nuclei.onnx",
    )
    export.add_argument("words", nargs="*", metavar="KEY=VALUE", help=WORDS_HELP)
    add_model_option(export)
    export.add_argument("--format", required=True, choices=["torchscript", "onnx", "safetensors"], help="file format")
    export.add_argument("--out", required=True, help="the file to write (must not exist)")
    export.add_argument("--image-size", type=int, default=256, help="example size for tracing (any size works after)")
    export.set_defaults(handler=_export)


def register_onnx(commands: argparse._SubParsersAction) -> None:
    """``export-onnx`` (registered apart from ``export``: it is listed last, as the older spelling)."""
    onnx = add_command(
        commands,
        "export-onnx",
        "export a checkpoint to ONNX (the older spelling of: export --format onnx)",
        "  nucleiseg export-onnx CKPT --out model.onnx",
    )
    onnx.add_argument("checkpoint", help="the .ckpt to export")
    onnx.add_argument("--out", required=True, help="the .onnx file to write (must not exist)")
    onnx.add_argument("--image-size", type=int, default=256, help="example size for tracing (any size works after)")
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    onnx.set_defaults(handler=_export_onnx)
