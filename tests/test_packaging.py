"""`pip install .` (not only -e) must ship every subpackage and the Triton kernels."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_keyword(name):
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup":
            for kw in node.keywords:
                if kw.arg == name:
                    return ast.literal_eval(kw.value)
    raise AssertionError(f"setup() has no {name}=")


def test_every_python_package_is_listed_in_setup_py():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "graphattn").rglob("__init__.py")}
    found.add("graphattn.kernels")  # kernels/ installs under this name
    assert set(_setup_keyword("packages")) == found


def test_kernels_folder_installs_as_graphattn_kernels():
    assert _setup_keyword("package_dir") == {"graphattn.kernels": "kernels"}
    assert (ROOT / "kernels" / "__init__.py").exists()
