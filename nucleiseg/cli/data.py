"""``nucleiseg data``: inspect, download, synthetic, from-qupath and prepare."""

from __future__ import annotations

import argparse
import json
import sys

from nucleiseg.cli.common import WORDS_HELP, add_command, compose, overrides_only


def _data_inspect(args: argparse.Namespace) -> int:
    from nucleiseg.data.inspect import inspect_dataset, summary_lines

    summary = inspect_dataset(args.dataset, args.root, args.mask_dir)
    if args.json:
        print(json.dumps(summary, indent=1))
    elif "classes" in summary:
        print("\n".join(summary_lines(summary)))
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
    from nucleiseg.data.synthetic import write_synthetic_folder, write_typed_synthetic_folder

    if args.typed:
        out = write_typed_synthetic_folder(args.to, args.count, args.size, args.seed, args.overwrite)
        print(f"{args.count} typed synthetic tiles in {out} (images/, instances/, types/, classes.json)")
        return 0
    out = write_synthetic_folder(args.to, args.count, args.size, args.seed, args.overwrite)
    print(f"{args.count} synthetic tiles in {out / 'images'}, their instance labels in {out / 'masks'}")
    return 0


def _data_from_qupath(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nucleiseg.data.typed.qupath import from_qupath, summary_lines

    report = from_qupath(args.images, args.geojson, args.to, args.mpp, args.overwrite)
    print("\n".join(summary_lines(report, Path(args.to))))
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
    from nucleiseg.data.download import ARCHIVES
    from nucleiseg.data.typed import TYPED_DATASETS

    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="STEP")
    inspect = add_command(
        data_commands,
        "inspect",
        "summarise a raw dataset (counts, sizes, nuclei per image and patient)",
        "  nucleiseg data inspect monuseg 'data/monuseg/MoNuSeg 2018 Training Data' --json",
    )
    inspect.add_argument("dataset", choices=["tnbc", "monuseg", *TYPED_DATASETS], help="which dataset the folder holds")
    inspect.add_argument("root", help="dataset folder or its downloaded .zip")
    inspect.add_argument("--mask-dir", default=None, help="MoNuSeg: mask PNGs for images without XML")
    inspect.add_argument("--json", action="store_true", help="print the full JSON summary")
    inspect.set_defaults(handler=_data_inspect)

    download = add_command(
        data_commands,
        "download",
        "download a dataset with checksum verification and resume",
        "  nucleiseg data download tnbc --to data\n  nucleiseg data download pannuke --to data",
    )
    download.add_argument("dataset", choices=sorted(ARCHIVES), help="the dataset to fetch")
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
    synthetic.add_argument(
        "--typed", action="store_true", help="nuclei of 3 classes (tumour, lymphocyte, stroma) as a typed folder"
    )
    synthetic.set_defaults(handler=_data_synthetic)

    qupath = add_command(
        data_commands,
        "from-qupath",
        "turn QuPath GeoJSON exports of classified nuclei into a typed training folder",
        "  nucleiseg data from-qupath tiles/ --to data/mine --mpp 0.25\n"
        "  nucleiseg data from-qupath tiles/ exports/ --to data/mine --mpp 0.5 --overwrite",
    )
    qupath.add_argument("images", help="folder of image tiles (PNG, TIFF, JPEG) or one image; not whole slides")
    qupath.add_argument(
        "geojson",
        nargs="*",
        help="GeoJSON files or folders (NAME.geojson for image NAME.*; those beside the images too)",
    )
    qupath.add_argument("--to", required=True, help="the typed folder to write (images/, instances/, types/)")
    qupath.add_argument("--mpp", type=float, default=None, help="pixel size of the images in micrometres")
    qupath.add_argument("--overwrite", action="store_true", help="replace an existing --to folder")
    qupath.set_defaults(handler=_data_from_qupath)

    prepare = add_command(
        data_commands,
        "prepare",
        "build the processed dataset of a data config (train.py does this itself)",
        "  nucleiseg data prepare data=paper\n  nucleiseg data prepare experiment=release",
    )
    prepare.add_argument("words", nargs="*", metavar="KEY=VALUE", help=WORDS_HELP + " (data=paper ...)")
    prepare.add_argument("--overwrite", action="store_true", help="rebuild even if the prepared folder exists")
    prepare.set_defaults(handler=_data_prepare)
