"""One run of a sweep, in its own process: ``python -m robustlr.experiments.child CONFIG.json OUT [DATA_DIR]``.

It dies with the sweep (:func:`robustlr.sim.lifecycle.die_with_parent`), and its own engine
workers die with it: killing the sweep leaves no process behind at any depth. Exit codes:
0 done, 2 a robustlr error (its message on stderr), 143 SIGTERM. robustlr's log lines (a resume
and the round it goes on from, warnings) go to stderr, that is the run's ``sweep.log``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    from robustlr.errors import RobustlrError
    from robustlr.sim.config import make_config
    from robustlr.sim.lifecycle import Terminated, die_with_parent
    from robustlr.sim.loop import run_experiment

    # the run's log (sweep.log): robustlr's info lines (a resume and its round) and warnings, timed
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("robustlr")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    parent = int(os.environ.get("ROBUSTLR_PARENT_PID", os.getppid()))
    die_with_parent(parent)
    cfg_path, out = Path(argv[0]), Path(argv[1])
    data_dir = argv[2] if len(argv) > 2 and argv[2] else None
    cfg = make_config(json.loads(cfg_path.read_text()), str(cfg_path))
    try:
        run_experiment(cfg, out, data_dir=data_dir)
    except Terminated as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 143
    except RobustlrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a process
    sys.exit(main(sys.argv[1:]))
