"""The committed BudgetAdmin stubs are what protos/generate.py makes of protos/ today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _generate() -> object:
    spec = importlib.util.spec_from_file_location("generate", ROOT / "protos" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_stubs_are_current(tmp_path: Path) -> None:
    written = _generate().generate(tmp_path)  # type: ignore[attr-defined]
    names = sorted(p.name for p in written)
    assert names == ["admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py"]
    for fresh in written:
        committed = ROOT / "extproc" / "admin" / "proto" / fresh.name
        assert committed.read_text() == fresh.read_text(), f"{fresh.name} is stale: run `make protos`"


def test_the_service_is_the_one_the_proto_names() -> None:
    from extproc.admin.proto import admin_pb2

    service = admin_pb2.DESCRIPTOR.services_by_name["BudgetAdmin"]
    assert service.full_name == "extproc.budgets.v1.BudgetAdmin"
    assert [m.name for m in service.methods] == [
        "ListBudgets",
        "GetSpend",
        "Explain",
        "ListHolds",
        "AdjustSpend",
    ]
