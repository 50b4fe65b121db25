"""The README's API example runs as written, using only the core (no Flax, no TensorFlow)."""

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
LAB_ONLY = ("flax", "orbax", "tensorflow", "tensorflow_datasets", "ml_collections", "matplotlib",
            "torch", "signticket.train", "signticket.runs")


def test_readme_api_example_runs_on_the_core_alone(tmp_path):
    block = re.search(r"<!-- api-example -->\s*```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md lost its marked API example"
    script = tmp_path / "example.py"
    script.write_text(block.group(1) + f"""
import json, sys
print(json.dumps(sorted(m for m in {LAB_ONLY!r} if m in sys.modules)))
""")
    root = str(README.parent)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path,
                         env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                              "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert "outputs unchanged by the permutation: True" in lines
    assert json.loads(lines[-1]) == []
