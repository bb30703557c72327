"""Run `vsrpp_dist/train.py` once per case, each as `__main__` in a child process of its own, after paying
the imports once.

    python tests/e2e/faults/cli_forks.py CASES.json RESULTS.json

CASES.json: {"train_py": PATH, "cases": {NAME: {"argv": [...], "stdout": PATH, "stderr": PATH}}}.
Each case is forked from this process (which has imported what train.py imports) and runs train.py
exactly as `python vsrpp_dist/train.py ARGV...` does, through runpy with `__name__ == "__main__"`: same
file, same argv, its own stdout and stderr files, its exit status. What a fresh interpreter adds is the
imports (about 3 s of CPU each on the CI machine; ten cases at once took 44 s); anything the imports print
goes to this process's own stderr, which the caller checks is empty. tests/e2e/test_faults.py also runs one
case as a plain subprocess and compares.

RESULTS.json: {NAME: {"code": int, "seconds": float}}.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path


def run_case(train_py: str, argv: list[str], stdout: str, stderr: str) -> None:
    """In the child: become `python train.py ARGV` and exit with its status."""
    for fd, path in ((1, stdout), (2, stderr)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = [train_py, *argv]
    code = 0
    try:
        runpy.run_path(train_py, run_name="__main__")
    except SystemExit as done:  # train.py ends with sys.exit(cli()); argparse exits with 2
        code = done.code if isinstance(done.code, int) else int(done.code is not None)
    except BaseException:  # what the interpreter does with an uncaught error
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def main(cases_path: str, results_path: str) -> int:
    spec = json.loads(Path(cases_path).read_text())
    train_py = spec["train_py"]
    import vsrpp_dist.cli  # noqa: F401  (train.py's imports at start-up)
    import vsrpp_dist.config  # noqa: F401
    import vsrpp_dist.training.run_dir  # noqa: F401
    import vsrpp_dist.training.trainer  # noqa: F401  (train.py's main() imports it before building the Trainer)

    children = {}
    for name, case in spec["cases"].items():
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            run_case(train_py, case["argv"], case["stdout"], case["stderr"])
        children[pid] = (name, started)
    results = {}
    while children:
        pid, status = os.wait()
        name, started = children.pop(pid)
        results[name] = {"code": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - started}
    Path(results_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
