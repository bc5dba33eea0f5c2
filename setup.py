"""Build hook: copy the shipped data folders into the wheel as package data (``simkit/_data``).

The folders stay at the top of the repository, where they are edited; an installed simkit
reads them through :func:`simkit.specs.catalog.data_root` (importlib.resources).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DATA = ("hw_specs", "workloads/models", "workloads/scenarios", "workloads/searches", "workloads/studies", "workloads/traces",
        "calibration")
LICENCES = ("LICENSE",)


class BuildPyWithData(build_py):
    """build_py, then the data folders into ``<build>/simkit/_data`` (not for editable installs,
    which read the checkout itself)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "simkit" / "_data"
        for folder in DATA:
            src = ROOT / folder
            if src.is_dir():
                shutil.copytree(src, dest / folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in LICENCES:
            shutil.copy2(ROOT / name, dest / name)


setup(cmdclass={"build_py": BuildPyWithData})
