"""The GPU check's CPU smoke run (`python -m benchmarks.gpu_check --device cpu --quick`): one JSON object on stdout,
the same in its file, every section present, and the sections that run on a CPU holding positive figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("gsplat_parity", "hogsa_ms_per_image", "text_to_image", "detection", "chorus_aggregation")


def medians(section: dict, key: str) -> list[float]:
    """The median of every `key` figure in `section` (at any depth)."""
    found = []
    for name, value in section.items():
        if name == key and isinstance(value, dict):
            found.append(value["median"])
        elif isinstance(value, dict):
            found += medians(value, key)
    return found


def test_cpu_smoke_run_reports_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--quick", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HOI_CACHE": str(tmp_path / "cache")})  # the tiny pipeline built here
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)  # stdout holds the JSON object and nothing else
    assert json.loads(out.read_text()) == result
    assert result["device_type"] == "cpu" and result["quick"] is True and result["errors"] == []
    for name in SECTIONS:
        assert isinstance(result[name], dict) and result[name], name
    assert "skipped" in result["gsplat_parity"]  # gsplat renders CUDA tensors only

    # What runs on a CPU holds figures, not a skip or an error.
    tiny, unet = result["text_to_image"]["tiny"], result["text_to_image"]["sd15_unet"]
    detection, chorus, hogsa = result["detection"], result["chorus_aggregation"], result["hogsa_ms_per_image"]
    for section in (tiny, unet, detection, chorus, hogsa):
        assert not {"error", "skipped"} & section.keys(), section
    figures = {"tiny": medians(tiny, "images_per_second"), "sd15_unet": medians(unet, "images_per_second_at_50_steps"),
               "detection": medians(detection, "images_per_second"), "chorus": medians(chorus, "views_per_second"),
               "hogsa": medians(hogsa, "ms_per_image")}
    assert len(figures["detection"]) == 2  # Mask R-CNN and Keypoint R-CNN
    for name, values in figures.items():
        assert values and all(isinstance(v, float) and v > 0 for v in values), (name, values)
    assert tiny["dtype"] == "torch.float32" and chorus["vs_cpu"]["max_abs_diff"] == 0.0
