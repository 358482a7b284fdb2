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
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"lcseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
