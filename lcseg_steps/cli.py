"""The ``lcseg`` command line."""

from __future__ import annotations

import argparse
import signal
import sys


def _inspect(args: argparse.Namespace) -> int:
    from lcseg_steps import inspect_store

    if args.image is None:
        print(inspect_store.describe(args.path))
        if args.png:
            raise SystemExit("--png needs --image ID")
        return 0
    print(inspect_store.describe_image(args.path, args.image))
    if args.png:
        out = inspect_store.render_image(args.path, args.image, args.png, index=args.index)
        print(f"wrote {out}")
    return 0


def _segment(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lcseg_steps.data.voc import write_label_png
    from lcseg_steps.model import load_model

    model = load_model(args.model, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stems = [Path(p).stem for p in args.images]
    if len(set(stems)) != len(stems):
        raise ValueError("two images share a file name; their PNGs would overwrite each other")
    for path, stem in zip(args.images, stems, strict=True):
        seg = model.segment(path)
        png = out / f"{stem}.png"
        write_label_png(png, seg.classes)
        print(
            f"{path}: {int(seg.foreground.mean() * 100)}% foreground, classes "
            f"{sorted(set(seg.region_classes.tolist()))} -> {png}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    # `lcseg inspect ... | head` should end quietly, not with a BrokenPipeError
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = argparse.ArgumentParser(prog="lcseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="print a store's arrays, attrs and statistics")
    p.add_argument("path", help="a .zarr store written by any lcseg stage")
    p.add_argument("--image", help="print (and with --png draw) one image's slice")
    p.add_argument("--png", help="write a PNG of the image with the store's per-patch maps")
    p.add_argument("--index", help="images.tsv (default: <store>/../../images.tsv)")
    p.set_defaults(func=_inspect)
    p = sub.add_parser("segment", help="segment images with a run's model.zarr")
    p.add_argument("--model", required=True, help="results/<run>/seed<s>/model.zarr")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-o", "--out", required=True, help="folder for the palette PNGs")
    p.add_argument("--device", help="torch device (default: the run's extract.device)")
    p.set_defaults(func=_segment)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"lcseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
