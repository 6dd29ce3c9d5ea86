"""Packaging: every install route ships every subpackage and the Triton kernels, the build finds
the CUDA toolkit from nvcc, and header changes rebuild the extension (also without ninja).

The routes themselves (pip old and new, editable and not, `setup.py develop`) each take a build
and are checked by hand and by CI: .venv installs with current pip (PEP 660), `make cuda-build`
with the venv's own pip 23.2 / setuptools 65 (`setup.py develop`). What is cheap is checked here.
"""
import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup_keyword(name):
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup":
            for kw in node.keywords:
                if kw.arg == name:
                    return ast.literal_eval(kw.value)
    raise AssertionError(f"setup() has no {name}=")


def _setup_functions(*names, **namespace):
    """Functions of setup.py, defined without running setup() (which would start a build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in body} == set(names)
    namespace = {"os": os, "re": re, "shutil": shutil, "subprocess": subprocess, "sys": sys, "HERE": str(ROOT),
                 **namespace}
    exec(compile(ast.Module(body=body, type_ignores=[]), "setup.py", "exec"), namespace)
    return [namespace[n] for n in names]


def test_every_python_package_is_listed_in_setup_py():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "graphattn").rglob("__init__.py")}
    found.add("graphattn.kernels")  # kernels/ installs under this name
    assert set(_setup_keyword("packages")) == found


def test_kernels_folder_installs_as_graphattn_kernels():
    # Installed packages (wheel, PEP 660 editable) map the folder explicitly ...
    assert _setup_keyword("package_dir") == {"graphattn.kernels": "kernels"}
    assert (ROOT / "kernels" / "__init__.py").exists()
    # ... and the source tree (setup.py develop, PYTHONPATH=.) resolves it through this link.
    link = ROOT / "graphattn" / "kernels"
    assert link.is_symlink() and os.readlink(link) == os.path.join("..", "kernels")


def test_source_tree_alone_imports_graphattn_kernels():
    """What `setup.py develop` (the route of old pip without PEP 660) gives: only the source tree
    on sys.path, no editable finder. python -S skips site-packages' .pth files (where editable
    installs put their finders); site-packages goes on the path by hand, for torch."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import graphattn.kernels, os; "
            "print(os.path.realpath(graphattn.kernels.__path__[0]))")
    run = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT), sysconfig.get_paths()["purelib"]],
                         capture_output=True, text=True, cwd="/", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == str((ROOT / "kernels").resolve())


def test_pyproject_declares_the_build_requirements():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]
    assert build["build-backend"] == "setuptools.build_meta"
    names = {re.split(r"[<>=!~ ]", r, maxsplit=1)[0] for r in build["requires"]}
    assert {"setuptools", "wheel", "torch", "ninja"} <= names
    # setuptools' PEP 660 editable installs start at 64.
    assert any(r.replace(" ", "") == "setuptools>=64" for r in build["requires"])


def test_the_extension_depends_on_every_header(monkeypatch):
    """Without ninja, setuptools rebuilds only when a file of `sources` or `depends` is newer than
    the extension: the headers must be there, or a change to one alone would leave a stale build."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("GRAPHATTN_SKIP_CUDA", "1")  # the same list either way; no toolkit search here

    (extension,) = _setup_functions("sources", "is_cuda_toolkit", "cuda_home_from_nvcc", "resolve_cuda_home",
                                    "want_cuda", "extension", glob=__import__("glob"),
                                    cpp_extension=cpp_extension)[-1:]
    ext = extension()
    headers = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cuh")}
    assert headers and headers <= set(ext.depends)


# ---------------------------------------------------------------------------
# The CUDA toolkit from nvcc (setup.py: cuda_home_from_nvcc, resolve_cuda_home)
# ---------------------------------------------------------------------------
def _fake_toolkit(tmp_path):
    """A toolkit whose nvcc answers --dryrun as the real one does, and a wrapper script elsewhere."""
    toolkit = tmp_path / "cuda-13.0"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "include").mkdir()
    (toolkit / "include" / "cuda_runtime_api.h").write_text("")
    real = toolkit / "bin" / "nvcc"
    real.write_text(f'#!/bin/sh\necho "#$ _HERE_={toolkit}/bin" >&2\necho "#$ TOP={toolkit}/bin/.." >&2\n')
    real.chmod(0o755)
    wrapper = tmp_path / "wrapper" / "bin" / "nvcc"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    return toolkit, wrapper


def test_cuda_home_from_a_wrapper_script_outside_the_toolkit(tmp_path):
    cuda_home_from_nvcc, = _setup_functions("is_cuda_toolkit", "cuda_home_from_nvcc")[1:]
    toolkit, wrapper = _fake_toolkit(tmp_path)
    assert cuda_home_from_nvcc(str(wrapper)) == str(toolkit)
    link = tmp_path / "link" / "nvcc"  # a symlink resolves without asking nvcc
    link.parent.mkdir()
    link.symlink_to(toolkit / "bin" / "nvcc")
    assert cuda_home_from_nvcc(str(link)) == str(toolkit)
    silent = tmp_path / "silent-nvcc"  # an nvcc that says nothing useful: no toolkit
    silent.write_text("#!/bin/sh\nexit 1\n")
    silent.chmod(0o755)
    assert cuda_home_from_nvcc(str(silent)) is None


def test_resolve_cuda_home_fixes_only_a_wrong_guess(tmp_path, monkeypatch):
    toolkit, wrapper = _fake_toolkit(tmp_path)
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")

    def resolve(guess):
        fake = types.SimpleNamespace(CUDA_HOME=guess)  # torch.utils.cpp_extension, as far as it matters
        resolve_cuda_home, = _setup_functions("is_cuda_toolkit", "cuda_home_from_nvcc", "resolve_cuda_home",
                                              cpp_extension=fake)[2:]
        resolve_cuda_home()
        return fake.CUDA_HOME

    # torch guesses the parent of nvcc's folder: wrong for a wrapper, so nvcc is asked.
    assert resolve(str(wrapper.parent.parent)) == str(toolkit)
    assert os.environ["CUDA_HOME"] == str(toolkit)  # for the compilers the build starts
    monkeypatch.delenv("CUDA_HOME")
    assert resolve(str(toolkit)) == str(toolkit)  # a right guess stays
    assert resolve(None) is None  # torch without CUDA: nothing to do
    monkeypatch.setenv("CUDA_HOME", "/the/users/choice")  # the user's choice is not second-guessed
    assert resolve(str(wrapper.parent.parent)) == str(wrapper.parent.parent)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_cuda_home_of_the_nvcc_on_path():
    cuda_home_from_nvcc, = _setup_functions("is_cuda_toolkit", "cuda_home_from_nvcc")[1:]
    home = cuda_home_from_nvcc(shutil.which("nvcc"))
    assert home is not None and os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h"))
