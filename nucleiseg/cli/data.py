"""``nucleiseg data``: inspect, download, synthetic and prepare."""

from __future__ import annotations

import argparse
import json
import sys

from nucleiseg.cli.common import WORDS_HELP, add_command, compose, overrides_only


def _data_inspect(args: argparse.Namespace) -> int:
    from nucleiseg.data.inspect import inspect_dataset

    summary = inspect_dataset(args.dataset, args.root, args.mask_dir)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            f"{summary['dataset']} at {summary['root']}: {summary['n_images']} images, {summary['n_masks']} masks, "
            f"{summary['n_patients']} patients, sizes {summary['sizes']}, {summary['n_nuclei']} nuclei"
        )
    return 0


def _data_download(args: argparse.Namespace) -> int:
    from nucleiseg.data.download import download

    def progress(done: int, total: int | None) -> None:
        if sys.stderr.isatty():
            print(f"\r{done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB" if total else ""), end="", file=sys.stderr)

    folder = download(args.dataset, args.to, timeout=args.timeout, progress=progress)
    print(f"\n{args.dataset}: verified and unpacked in {folder}")
    return 0


def _data_synthetic(args: argparse.Namespace) -> int:
    from nucleiseg.data.synthetic import write_synthetic_folder

    out = write_synthetic_folder(args.to, args.count, args.size, args.seed, args.overwrite)
    print(f"{args.count} synthetic tiles in {out / 'images'}, their instance labels in {out / 'masks'}")
    return 0


def _data_prepare(args: argparse.Namespace) -> int:
    from nucleiseg.data.prepare import load_manifest, prepare_dataset

    cfg = compose(overrides_only(args, "data prepare"))
    folder = prepare_dataset(cfg.data, overwrite=args.overwrite, log=lambda line: print(line, file=sys.stderr))
    manifest = load_manifest(folder)
    summary = {"folder": str(folder), "counts": manifest["counts"], "content_hash": manifest["content_hash"]}
    print(json.dumps(summary, indent=1))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """``data`` and its steps."""
    data = add_command(
        commands,
        "data",
        "download, inspect and prepare the datasets",
        "  nucleiseg data download tnbc --to data\n  nucleiseg data inspect tnbc data/tnbc --json",
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    inspect = add_command(
        data_commands,
        "inspect",
        "summarise a raw dataset (counts, sizes, nuclei per image and patient)",
        "  nucleiseg data inspect monuseg 'data/monuseg/MoNuSeg 2018 Training Data' --json",
    )
    inspect.add_argument("dataset", choices=["tnbc", "monuseg"], help="which dataset the folder holds")
    inspect.add_argument("root", help="dataset folder or its downloaded .zip")
    inspect.add_argument("--mask-dir", default=None, help="MoNuSeg: mask PNGs for images without XML")
    inspect.add_argument("--json", action="store_true", help="print the full JSON summary")
    inspect.set_defaults(handler=_data_inspect)

    download = add_command(
        data_commands,
        "download",
        "download a dataset with checksum verification and resume",
        "  nucleiseg data download tnbc --to data\n  nucleiseg data download monuseg-test --to data",
    )
    download.add_argument("dataset", choices=["tnbc", "monuseg", "monuseg-test"], help="the dataset to fetch")
    download.add_argument("--to", required=True, help="folder to download into (e.g. data)")
    download.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds")
    download.set_defaults(handler=_data_download)

    synthetic = add_command(
        data_commands,
        "synthetic",
        "write synthetic H&E tiles and their instance masks, to try predict and evaluate on",
        "  nucleiseg data synthetic --to tiles --count 8",
    )
    synthetic.add_argument("--to", required=True, help="folder for images/ and masks/")
    synthetic.add_argument("--count", type=int, default=4, help="number of tiles")
    synthetic.add_argument("--size", type=int, default=256, help="tile side in pixels")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed of the tiles")
    synthetic.add_argument("--overwrite", action="store_true", help="replace the tiles of an earlier call")
    synthetic.set_defaults(handler=_data_synthetic)

    prepare = add_command(
        data_commands,
        "prepare",
        "build the processed dataset of a data config (train.py does this itself)",
        "  nucleiseg data prepare data=paper\n  nucleiseg data prepare experiment=release",
    )
    prepare.add_argument("words", nargs="*", metavar="KEY=VALUE", help=WORDS_HELP + " (data=paper ...)")
    prepare.add_argument("--overwrite", action="store_true", help="rebuild even if the prepared folder exists")
    prepare.set_defaults(handler=_data_prepare)
