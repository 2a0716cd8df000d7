"""The labs' one log function: lines `[TAG] message` on stdout, errors `[TAG] ERROR: message` on
stderr; each script names its tag once (`log = Logger("pull-lab")`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NoReturn


@dataclass(frozen=True)
class Logger:
    tag: str = "lab"

    def __call__(self, msg: str) -> None:
        print(f"[{self.tag}] {msg}", flush=True)

    def die(self, msg: str) -> NoReturn:
        print(f"[{self.tag}] ERROR: {msg}", file=sys.stderr, flush=True)
        sys.exit(1)
