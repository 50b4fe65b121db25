"""The benchmark runs (tiny sizes; no timing assertions — timings live in bench/, not tests)."""

import json

from bench import train_step


def test_train_step_bench_runs(tmp_path):
    out = tmp_path / "bench.json"
    result = train_step.main(["--tiny", "--model", "convnet", "--image-shape", "28,28,1",
                              "--sparsity", "0.5", "--out", str(out)])
    assert result["img_per_s_median"] > 0 and json.loads(out.read_text())["model"] == "convnet"
