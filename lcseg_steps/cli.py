"""The ``lcseg`` command line."""

from __future__ import annotations

import argparse
import signal
import sys


def _inspect(args: argparse.Namespace) -> int:
    from lcseg_steps.stores import inspect as inspect_store

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
    """Exit 0 when every input was segmented, 1 when some were skipped (listed on stderr
    and in ``<out>/skipped.tsv``); model and usage errors exit 2 in ``main``."""
    from pathlib import Path

    from lcseg_steps.apply import segment_paths
    from lcseg_steps.apply.config import first_seed, locate_model
    from lcseg_steps.apply.model_zarr import load_model
    from lcseg_steps.data.palette import write_label_png

    items, skipped = segment_paths.plan(args.images)
    for path, reason in skipped:
        print(f"lcseg segment: skipped {path}: {reason}", file=sys.stderr)
    model = load_model(locate_model(args.model, first_seed(args.model)), device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write(item, seg) -> None:
        png = out / f"{item.name}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        write_label_png(png, seg.classes)
        print(
            f"{item.path}: {int(seg.foreground.mean() * 100)}% foreground, classes "
            f"{sorted(set(seg.region_classes.tolist()))} -> {png}"
        )

    failed = segment_paths.segment_all(
        model,
        items,
        write,
        batch_size=args.batch_size,
        jobs=segment_paths.default_jobs() if args.jobs is None else args.jobs,
        log=lambda m: print(f"lcseg segment: {m}", file=sys.stderr),
    )
    skipped += failed
    tsv = segment_paths.write_skipped(skipped, out / "skipped.tsv")
    print(
        f"{len(items) - len(failed)} image(s) segmented into {out}; {len(skipped)} skipped ({tsv})"
    )
    return 1 if skipped else 0


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _verify(args: argparse.Namespace) -> int:
    from lcseg_steps.stores.checks import verify

    findings = verify(args.path)
    if not findings:
        raise FileNotFoundError(f"{args.path}: no *.zarr store there")
    for f in findings:
        print(f.line())
    counts = {s: sum(f.status == s for f in findings) for s in ("ok", "damaged", "no checksum")}
    print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(findings)} stores")
    return 1 if counts["damaged"] else 0


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
    p = sub.add_parser(
        "segment",
        help="segment image files and folders with a run's model.zarr",
        description="Segment every image under the given files and folders (searched "
        "recursively) into <out>/<name>.png (the input's name with its extension kept). "
        "Exit status: 0 all segmented, 1 some skipped (listed on stderr and in "
        "<out>/skipped.tsv), 2 usage or model error.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="results/<run>/seed<s>/model.zarr, a run's folder results/<run> or a run name "
        "(both: the lowest seed's model)",
    )
    p.add_argument("images", nargs="+", help="image files and folders")
    p.add_argument("-o", "--out", required=True, help="folder for the palette PNGs")
    p.add_argument("--device", help="torch device (default: the run's extract.device)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument(
        "--jobs",
        type=_positive,
        help="worker processes that run the dense CRF beside the forward passes; 1 runs "
        "everything in one process, one image after another (default: the usable cores, "
        "at most 8); the results are the same",
    )
    p.set_defaults(func=_segment)
    p = sub.add_parser("verify", help="check every chunk of every store of a run")
    p.add_argument("path", help="results/<run> (or any folder of stores, or one .zarr store)")
    p.set_defaults(func=_verify)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"lcseg {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
