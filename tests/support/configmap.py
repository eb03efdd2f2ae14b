"""A folder laid out and updated as the kubelet mounts a ConfigMap, for reload tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path


class MountedConfigMap:
    """A folder laid out as the kubelet mounts a ConfigMap, and updated the way it updates one:
    files in a timestamped folder, `..data` linking to it, each visible name linking into
    `..data`; an update writes a new folder and swaps `..data` with one atomic rename."""

    def __init__(self, root: Path, files: Mapping[str, str]) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()
        self.publish(files)

    def publish(self, files: Mapping[str, str]) -> None:
        self.generation += 1
        stamp = f"..2026_11_29_10_00_{self.generation:02d}.123"
        folder = self.root / stamp
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        data = self.root / "..data"
        old = os.readlink(data) if data.is_symlink() else None
        tmp = self.root / "..data_tmp"
        os.symlink(stamp, tmp)
        os.replace(tmp, data)
        for name in files:
            if not (self.root / name).is_symlink():
                os.symlink(f"..data/{name}", self.root / name)
        for visible in self.root.iterdir():
            if not visible.name.startswith(".") and visible.name not in files:
                visible.unlink()
        if old is not None:
            shutil.rmtree(self.root / old)
