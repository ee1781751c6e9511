"""Shared CLI plumbing: bad input becomes one line on stderr and a non-zero exit."""

from __future__ import annotations

import sys
from typing import Callable

from rehrseg_nnunet.errors import RehrsegInputError


def run_cli(program: str, body: Callable[[], None]) -> None:
    try:
        body()
    except RehrsegInputError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{program}: interrupted; run it again with --continue to resume.", file=sys.stderr)
        sys.exit(130)
