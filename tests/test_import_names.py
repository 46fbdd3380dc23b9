"""dstrain owns every top-level import name it installs.

Why: transformers (5.2x) requires Hugging Face's ``kernels`` distribution, which
installs a top-level package named ``kernels``.  dstrain once shipped its Triton
kernels under that same name; whichever came first on ``sys.path`` won, and both
sides broke (dstrain's torchrun workers imported Hugging Face's package, and
transformers' hub-kernels integration imported dstrain's).  These tests fail as soon
as any name dstrain installs, or any package folder at the repository root, is also
provided by another installed distribution.
"""
import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _dstrain_top_level_names() -> set:
    """Top-level import names of the installed dstrain distribution (from its metadata)."""
    dist = md.distribution("dstrain")
    text = dist.read_text("top_level.txt")
    if text is not None:
        return {line.strip() for line in text.splitlines() if line.strip()}
    return {name for name, dists in md.packages_distributions().items() if "dstrain" in dists}


def test_dstrain_installs_only_the_name_dstrain():
    assert _dstrain_top_level_names() == {"dstrain"}


def test_no_installed_name_of_dstrain_is_provided_by_another_distribution():
    owners = md.packages_distributions()
    clashes = {name: sorted(set(owners.get(name, [])) - {"dstrain"}) for name in _dstrain_top_level_names()}
    assert not {n: d for n, d in clashes.items() if d}, clashes


def test_no_package_folder_at_the_repository_root_shadows_an_installed_distribution():
    """Run from the repository root (``pytest``, ``python launch/train.py``), the root is on sys.path first."""
    owners = md.packages_distributions()
    root_packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    shadowing = {name: owners[name] for name in root_packages if name in owners and name != "dstrain"}
    assert not shadowing, f"repository-root packages shadow installed distributions: {shadowing}"


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_transformers_hub_kernels_and_dstrain_kernels_import_together(cwd, tmp_path):
    """In one process, from the repo root and from another folder: both ``kernels`` packages resolve to their owners."""
    code = (
        "import importlib.util, dstrain, dstrain.kernels\n"
        "from dstrain.kernels import kth_smallest_abs, pack_mask\n"
        "import transformers.integrations.hub_kernels\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print('HF_KERNELS', spec.origin if spec else None)\n"
        "print('DSTRAIN_KERNELS', dstrain.kernels.__file__)\n"
    )
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT if cwd == "root" else tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("HF_", "DSTRAIN_")))
    assert Path(lines["DSTRAIN_KERNELS"]).parent == ROOT / "dstrain" / "kernels"
    if lines["HF_KERNELS"] != "None":  # Hugging Face's kernels is installed (transformers >= 5.2x requires it)
        origin = Path(lines["HF_KERNELS"]).resolve()
        owned = Path(md.distribution("kernels").locate_file("kernels/__init__.py")).resolve()
        assert origin == owned, f"'import kernels' found {origin}, not the kernels distribution's {owned}"
