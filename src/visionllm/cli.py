"""The `visionllm` command: thin argument parsing in front of library functions."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from visionllm import __version__

logger = logging.getLogger("visionllm")


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _holdout_pairs(text: str) -> tuple[tuple[str, str], ...]:
    from visionllm.data.shapes.scene import CATEGORIES, COLORS

    pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        words = item.split()
        if len(words) != 2 or words[0] not in COLORS or words[1] not in CATEGORIES:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not 'COLOR SHAPE' (colours: {', '.join(COLORS)}; categories: {', '.join(CATEGORIES)})"
            )
        pairs.append((words[0], words[1]))
    return tuple(pairs)


def _cmd_data_shapes(args: argparse.Namespace) -> None:
    from visionllm.data.shapes.dataset import generate_shapesworld
    from visionllm.data.shapes.inspect import describe, write_contact_sheet
    from visionllm.data.shapes.scene import ShapesWorldConfig

    try:
        config = ShapesWorldConfig(
            image_size=args.size,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            person_probability=args.person_probability,
            holdout_pairs=args.holdout,
        )
    except ValueError as error:
        raise CliError(str(error)) from None
    try:
        layout = generate_shapesworld(args.out, args.train, args.val, config, seed=args.seed, progress=not args.quiet)
    except (ValueError, OSError) as error:
        raise CliError(str(error)) from None
    print(describe(layout.root))
    if args.contact_sheet:
        split = "val" if args.val else "train"
        path = write_contact_sheet(layout.root, split, args.contact_sheet)
        print(f"contact sheet: {path}")


def _cmd_data_info(args: argparse.Namespace) -> None:
    from visionllm.data.shapes.inspect import describe

    print(describe(args.root))


def _cmd_data_sheet(args: argparse.Namespace) -> None:
    from visionllm.data.shapes.inspect import write_contact_sheet

    print(write_contact_sheet(args.root, args.split, args.out, count=args.count))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionllm", description="VisionLLM: vision tasks through language.")
    parser.add_argument("--version", action="version", version=f"visionllm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="generate and inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True)

    shapes = data_commands.add_parser(
        "shapes",
        help="write a ShapesWorld dataset in the public formats (COCO, RefCOCO, VQAv2, LLaVA, ...)",
        description="Write a ShapesWorld dataset, deterministic by seed. See docs/data.md for the layout.",
    )
    shapes.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    shapes.add_argument("--train", type=int, default=1000, help="training images (default 1000)")
    shapes.add_argument("--val", type=int, default=500, help="validation images (default 500)")
    shapes.add_argument("--size", type=int, default=128, help="image side in pixels, 64..512 (default 128)")
    shapes.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    shapes.add_argument("--min-objects", type=int, default=1, help="objects per image, at least (default 1)")
    shapes.add_argument("--max-objects", type=int, default=6, help="objects per image, at most (default 6)")
    shapes.add_argument(
        "--person-probability", type=float, default=0.15, help="chance an object is a person (default 0.15)"
    )
    shapes.add_argument(
        "--holdout",
        type=_holdout_pairs,
        default=(),
        metavar="'COLOR SHAPE,...'",
        help="colour-shape pairs never drawn in train, e.g. 'purple star,green hexagon'",
    )
    shapes.add_argument("--contact-sheet", type=Path, help="also write a PNG of samples with annotations drawn")
    shapes.add_argument("--quiet", action="store_true", help="no progress bar")
    shapes.set_defaults(func=_cmd_data_shapes)

    info = data_commands.add_parser("info", help="summarise a ShapesWorld dataset")
    info.add_argument("root", type=Path, help="dataset folder")
    info.set_defaults(func=_cmd_data_info)

    sheet = data_commands.add_parser("sheet", help="draw samples of a ShapesWorld split with their annotations")
    sheet.add_argument("root", type=Path, help="dataset folder")
    sheet.add_argument("--split", default="val", choices=("train", "val"))
    sheet.add_argument("--out", type=Path, required=True, help="PNG to write")
    sheet.add_argument("--count", type=int, default=8, help="images on the sheet (default 8)")
    sheet.set_defaults(func=_cmd_data_sheet)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.func(args)
    except CliError as error:
        print(f"visionllm: error: {error}", file=sys.stderr)
        return 2
    except FileNotFoundError as error:
        print(f"visionllm: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
