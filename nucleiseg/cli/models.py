"""``nucleiseg models``, ``nucleiseg export`` and ``nucleiseg export-onnx``: the ready models, and a model written
for other tools."""

from __future__ import annotations

import argparse
import json

from nucleiseg.cli.common import WORDS_HELP, UsageError, add_command, add_model_option, overrides_only
from nucleiseg.predict.model_sources import resolve_model  # light: its heavy imports are inside

IMAGE_SIZE_HELP = (
    "side of the square example image the export traces and checks, a multiple of 32; the exported model then takes "
    "any batch and any H and W that are multiples of 32"
)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nucleiseg.inference.export_model import check_image_size, check_writable, export_model

    overrides = overrides_only(args, "export", allowed="--model, --format, --out and KEY=VALUE overrides")
    check_image_size(args.image_size)  # before a model is downloaded for nothing
    check_writable(Path(args.out).expanduser())
    model, _ = resolve_model(args.model, args.run_id, overrides)
    print(json.dumps(export_model(model, args.format, args.out, image_size=args.image_size), indent=1))
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from nucleiseg.inference.onnx_export import export_onnx

    result = export_onnx(args.checkpoint, args.out, image_size=args.image_size, check=not args.no_check)
    print(json.dumps(result, indent=1))
    return 0


def _models(args: argparse.Namespace) -> int:
    from nucleiseg.models.zoo import ModelError, describe_models, model_card

    if args.card:
        try:
            print(model_card(args.card), end="")
        except ModelError as error:
            raise UsageError(str(error)) from None
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
    if not any(row["types"] != "none (untyped)" for row in rows):
        console.print(
            "No typed model ships yet: none has been trained on real typed data (PanNuke, CoNSeP, Lizard, MoNuSAC) "
            "and checked on a hold-out. Train one with `python train.py experiment=typed_release` (see the docs' "
            "Typed nuclei page)."
        )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """``models`` and ``export``."""
    models = add_command(
        commands,
        "models",
        "the ready models: resolution, head, size, licence and headline metrics",
        "  nucleiseg models\n  nucleiseg models --card default",
    )
    models.add_argument(
        "--card", default=None, metavar="NAME", help="print this model's card (`default`: the default model's)"
    )
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
    export.add_argument("--image-size", type=int, default=256, help=IMAGE_SIZE_HELP)
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
    onnx.add_argument("--image-size", type=int, default=256, help=IMAGE_SIZE_HELP)
    onnx.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    onnx.set_defaults(handler=_export_onnx)
