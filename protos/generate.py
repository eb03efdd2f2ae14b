"""Generates the Python stubs of protos/ into extproc/admin/proto/ with grpcio-tools.

    .venv/bin/python protos/generate.py [OUT_DIR]      # make protos

The stubs are committed (a test regenerates them and compares, so they stay current).
protoc names a generated module after the proto's path (`extproc/budgets/v1/...`), which
in this tree is not a package: the gRPC stub's one import of its message module is
rewritten to where the stubs live.
"""

from __future__ import annotations

import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
SOURCES = ("extproc/budgets/v1/admin.proto",)
OUT = ROOT / "extproc" / "admin" / "proto"
_GENERATED_IMPORT = "from extproc.budgets.v1 import admin_pb2"
_IMPORT = "from extproc.admin.proto import admin_pb2"


def generate(out: Path) -> list[Path]:
    """Writes admin_pb2.py, admin_pb2.pyi and admin_pb2_grpc.py into `out`; returns them."""
    include = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        code = protoc.main(
            [
                "protoc",
                f"-I{PROTOS}",
                f"-I{include}",
                f"--python_out={tmp}",
                f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}",
                *(str(PROTOS / source) for source in SOURCES),
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed ({code})")
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for generated in sorted((Path(tmp) / "extproc" / "budgets" / "v1").glob("admin_pb2*")):
            text = generated.read_text()
            if generated.name == "admin_pb2_grpc.py":
                if _GENERATED_IMPORT not in text:
                    raise SystemExit("the generated gRPC stub no longer imports its messages as expected")
                text = text.replace(_GENERATED_IMPORT, _IMPORT)
            target = out / generated.name
            target.write_text(text)
            written.append(target)
        return written


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT):
        print(path)
