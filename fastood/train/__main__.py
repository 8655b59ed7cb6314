"""``python -m fastood.train --data DIR --out RUN_DIR [...]`` (``-h`` lists every flag).

Under ``torchrun --nproc-per-node N -m fastood.train ...`` each process is one rank;
``--batch-size`` is the global batch. Exit status: 0 when the run finished or stopped
cleanly at a checkpoint, 2 on bad arguments or data, 1 on other errors.
"""

from __future__ import annotations

import sys

from fastood.train.checkpoint import CheckpointError
from fastood.train.config import config_from_args
from fastood.train.trainer import train


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, explicit = config_from_args(argv)
        train(cfg, explicit)
    except (ValueError, FileNotFoundError, NotADirectoryError, CheckpointError) as exc:
        print(f"python -m fastood.train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
