"""The README's "Python in five lines" runs as written (from the repository root)."""
import re
from pathlib import Path

import pytest
from conftest import NEQUIX_MP

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not NEQUIX_MP.is_file(), reason="Nequix MP missing")
def test_python_in_five_lines(monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python in five lines\s+```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(compile(block, "README.md", "exec"), scope)
    e_ase, e_curvax = scope["atoms"].get_potential_energy(), float(scope["res"]["energy"])
    assert abs(e_ase - e_curvax) < 1e-4 * abs(e_curvax) and e_curvax < -80  # eV, 16-atom Si
