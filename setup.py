"""Packaging hook: everything else is in pyproject.toml.

The shipped playbooks live in the top-level ``playbooks/`` directory (the owner's
layout), which is not a Python package. ``build_py`` copies it into the wheel as
``bot/shipped/playbooks`` so an installed llm-incident finds its playbooks, their
tests and schema, and the alert rules pack from any folder (``bot.playbook.shipped``).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildWithPlaybooks(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "bot" / "shipped" / "playbooks"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(ROOT / "playbooks", dest,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildWithPlaybooks})
