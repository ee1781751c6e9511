"""Build hook: ships ``rehrseg_nnunet_ext_trainer.pth`` for ``pip install .`` and ``pip install -e .`` alike.

The ``.pth`` file must sit in site-packages itself, which package data cannot reach and ``data_files`` cannot
either (they go under the prefix, and editable wheels skip them). So ``build_py`` writes it: into ``build_lib``
for a regular wheel (whose root is site-packages), and, in editable mode, into the unpacked editable wheel
(setuptools' ``editable_wheel`` points the ``install`` command's ``install_lib`` there and packs everything in it).
The line imports :mod:`rehrseg_nnunet._ext_trainer_env` (only ``os``) and stays silent if the package is gone.
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "rehrseg_nnunet_ext_trainer.pth"
# sorts after setuptools' "__editable__.*.pth", whose finder must be installed first for an editable install
PTH_LINE = 'import os; exec("try: import rehrseg_nnunet._ext_trainer_env\\nexcept ImportError: pass")\n'


class BuildPyWithPth(build_py):
    """``build_py`` that also writes the start-up ``.pth`` file into the wheel's root."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target = self.get_finalized_command("install").install_lib
        else:
            target = self.build_lib
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, PTH_NAME), "w", encoding="utf-8") as handle:
            handle.write(PTH_LINE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


setup(cmdclass={"build_py": BuildPyWithPth})
