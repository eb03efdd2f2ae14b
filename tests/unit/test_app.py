"""What a sidecar process loads: files mode never imports the Kubernetes client (its models
are tens of MB of a process's memory; measured in bench/README.md)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.procs import ROOT


def test_files_mode_does_not_import_the_kubernetes_client() -> None:
    code = (
        "import sys, extproc.app, extproc.cli\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes_asyncio', 'kubernetes'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
