"""Shared CLI plumbing: bad input becomes one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys
from typing import Callable

from rehrseg_nnunet.errors import RehrsegInputError


def run_cli(program: str, body: Callable[[], None], resume_hint: str = "run it again to resume") -> None:
    """Run ``body``: bad input becomes one line on stderr (exit 2); Ctrl-C says how to resume (exit 130)."""
    try:
        body()
    except RehrsegInputError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{program}: interrupted; {resume_hint}.", file=sys.stderr)
        sys.exit(130)
