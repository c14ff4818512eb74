"""README.md's "Export and deploy" commands, run verbatim on a tiny trained CamVid student.

The commands are read from README.md itself and run unchanged as subprocesses, from a working folder
laid out as they expect: ``export/`` and ``deploy/`` (links to this repository), the student's run
folder at ``RUN`` and a tiny CamVid tree (SegNet layout) at ``../shared/data/camvid``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from segdistill.deploy.artifact import read_artifact_info
from tests.helpers import ROOT, TINY, subprocess_env

SIZE = (36, 48)  # H x W of the tiny CamVid images
SCRIPTS = ["export/to_onnx.py", "export/to_torchscript.py", "export/to_int8.py", "export/to_trt.py", "deploy/benchmark.py"]


def readme_commands(heading: str) -> list[str]:
    """The commands of the first bash block in the README section ``heading``, continued lines joined."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def write_camvid(root: Path) -> None:
    """A few images in CamVid's SegNet layout whose labels follow the brightness (learnable, 11 classes + ignore)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        lines = []
        for i in range(count):
            name = f"0001TP_{i:06d}.png"
            image = rng.integers(0, 256, size=(*SIZE, 3), dtype=np.uint8)
            label = (image.mean(-1) * 12 / 256).astype(np.uint8)  # 0..11, 11 being ignored
            for folder, pixels in ((split, image), (f"{split}annot", label)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / folder / name)
            lines.append(f"{split}/{name} {split}annot/{name}\n")
        (root / f"{split}.txt").write_text("".join(lines))


def expected_trt_result() -> tuple[int, str]:
    """Exit status and stderr text of the to_trt.py line on this machine."""
    if importlib.util.find_spec("tensorrt") is None:
        return 2, "TensorRT is not installed"
    return (0, "") if torch.cuda.is_available() else (2, "needs an NVIDIA GPU")


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> tuple[Path, list[tuple[str, subprocess.CompletedProcess]]]:
    """The working folder after running every command of the block, and each command with its result."""
    from segdistill.train import main as train

    tmp = tmp_path_factory.mktemp("readme")
    work = tmp / "repo"
    work.mkdir()
    for folder in ("export", "deploy"):
        (work / folder).symlink_to(ROOT / folder)
    write_camvid(tmp / "shared" / "data" / "camvid")
    camvid = ["data.name=camvid", f"data.root={tmp / 'shared' / 'data' / 'camvid'}", f"data.crop_size=[{SIZE[0]},{SIZE[1]}]"]
    train([*TINY, *camvid, "train.iterations=8", f"output_dir={work / 'RUN'}"])

    env = subprocess_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python` is this interpreter
    results = []
    for command in readme_commands("Export and deploy"):
        results.append((command, subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=600)))
    return work, results


def test_readme_export_commands_run_verbatim(readme_run) -> None:
    work, results = readme_run
    assert [next((s for s in SCRIPTS if s in command), command) for command, _ in results] == SCRIPTS
    for command, result in results:
        status, message = expected_trt_result() if "export/to_trt.py" in command else (0, "")
        assert result.returncode == status, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        assert message in result.stderr, f"{command}\n{result.stderr[-3000:]}"
    assert read_artifact_info(work / "RUN" / "final" / "export" / "model_int8.onnx").parity["passed"]
    assert (work / "runs" / "deploy_benchmark" / "results.json").is_file()


def test_readme_int8_graph_keeps_biases_and_the_classifier_in_float(readme_run) -> None:
    """TensorRT's ONNX parser dequantizes only INT8 / FP8 (onnx-tensorrt operators.md): no DequantizeLinear
    may read an INT32 bias; the quantized convolutions keep float biases instead. The classifier stays
    float: quantized logits would move the argmax."""
    work, _ = readme_run
    graph = onnx.load(str(work / "RUN" / "final" / "export" / "model_int8.onnx")).graph
    types = {i.name: i.data_type for i in graph.initializer}
    dequantized = {n.output[0]: types.get(n.input[0]) for n in graph.node if n.op_type == "DequantizeLinear"}
    assert onnx.TensorProto.INT32 not in dequantized.values()
    quantized_convs = [n for n in graph.node if n.op_type == "Conv" and n.input[1] in dequantized]
    assert quantized_convs and any(types.get(n.input[2]) == onnx.TensorProto.FLOAT for n in quantized_convs if len(n.input) > 2)
    classifier = [n for n in graph.node if n.op_type == "Conv"][-1]
    assert types.get(classifier.input[1]) == onnx.TensorProto.FLOAT


def test_readme_qat_commands_run_with_the_tiny_overrides(readme_run) -> None:
    """The "Quantization-aware distillation" lines after the export ones, in the same folder; the training
    line gets the tiny model's overrides appended (later overrides win; no ImageNet file for its backbone),
    the others run verbatim."""
    work, _ = readme_run
    (work / "configs").symlink_to(ROOT / "configs")
    tiny = " ".join(shlex.quote(a) for a in [*TINY, f"data.crop_size=[{SIZE[0]},{SIZE[1]}]", "data.resize=1.0", "model.pretrained=null"])
    env = subprocess_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for command in readme_commands("Quantization-aware distillation"):
        command += f" {tiny}" if "segdistill.train" in command else ""
        result = subprocess.run(["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    info = read_artifact_info(work / "RUN_QAT" / "final" / "export" / "model_int8.onnx")
    assert info.precision == "int8" and info.parity["passed"] and info.extra["quantization"]["qat"]
    assert (work / "runs" / "qat_benchmark" / "results.json").is_file()
