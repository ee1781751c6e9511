"""Shared CLI plumbing: bad input becomes one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rehrseg_nnunet.errors import RehrsegInputError


def run_cli(program: str, body: Callable[[], None], resume_hint: str = "run it again to resume") -> None:
    """Run ``body``: bad input becomes one line on stderr (exit 2), as does a file-system error (exit 1);
    Ctrl-C says how to resume (exit 130)."""
    try:
        body()
    except RehrsegInputError as error:
        close_progress_bars()
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:  # e.g. an output folder below a file, or without write permission
        close_progress_bars()
        where = f" {error.filename}:" if error.filename else ""
        print(f"{program}: error:{where} {error.strerror or error}; check the path, its permissions and the free "
              f"disk space.", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        close_progress_bars()
        print(f"{program}: interrupted; {resume_hint}.", file=sys.stderr)
        sys.exit(130)


def close_progress_bars() -> None:
    """Close the progress bars an error left open, so that the error is the last line on stderr (an open
    bar redraws itself when it is garbage-collected)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def new_parser(program: str, description: str, raw: bool = False) -> argparse.ArgumentParser:
    """The parser of a console script; ``raw`` keeps the description's line breaks."""
    formatter = argparse.RawDescriptionHelpFormatter if raw else argparse.HelpFormatter
    return argparse.ArgumentParser(prog=program, description=description, formatter_class=formatter)


def add_thick_slice_folders(parser: argparse.ArgumentParser, output_help: str) -> None:
    """``-i`` (thick-slice images in nnU-Net's naming) and ``-o`` (``output_help``) of the HR-writing scripts."""
    parser.add_argument("-i", required=True, help="input folder of thick-slice images (nnU-Net naming: CASE_0000.ext)")
    parser.add_argument("-o", required=True, help=output_help)
