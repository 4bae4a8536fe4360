"""The runtime path stays light, and an installed (non-editable) wheel carries its data."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_bnsym_does_not_import_sympy_or_jinja2():
    code = ("import sys, bnsym; bnsym.batch_norm; bnsym.BatchNorm; "
            "heavy = [m for m in ('sympy', 'jinja2') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_wheel_contains_templates_and_generated(tmp_path):
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"building the wheel failed: {p.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("bnsym-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    templates = sorted(n for n in names if n.startswith("bnsym/templates/"))
    assert templates and all(n.endswith(".j2") for n in templates)
    expected = {f"bnsym/templates/{p.name}" for p in (ROOT / "templates").glob("*.j2")}
    assert expected <= set(names)
    expected = {f"bnsym/generated/{p.name}" for p in (ROOT / "generated").iterdir() if p.suffix in (".c", ".h")}
    assert expected <= set(names)
    assert "bnsym/cli.py" in names
