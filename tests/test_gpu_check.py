"""benchmarks/gpu_check.py --tiny --device cpu: every section of the GPU check runs (random weights, a few
images), so that the command cannot rot between GPU runs. Its numbers mean nothing here."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_every_section_and_writes_json(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["tiny"] is True and report["device"] == "cpu" and report["device_name"]
    paths = [row["path"] for row in report["throughput"]]
    assert [p[:3] for p in paths[:3]] == ["(a)", "(b)", "(c)"] and "notebook 06 recipe" in paths[3]
    for row in report["throughput"]:
        assert row["img_per_s"] > 0 and row["steps"] == 2 and row["peak_gpu_mb"] is None
    assert report["throughput"][2]["compile_seconds"] is not None
    nb07 = report["notebook07"]
    for run in (nb07["scratch"], nb07["pretrained"]):
        assert 0 <= run["test_acc"] <= 1 and run["train_seconds"] > 0 and run["epochs"] >= 1
    assert nb07["pretrained"]["model"] == "resnet50 (pretrained)" and nb07["scratch"]["epochs"] == 16  # full mode
    assert "TINY MODE: random weights" in proc.stdout and "| Pets ResNet34 224px |" in proc.stdout
