"""Issue 34, item 4: the README's "Your own images (offline)" commands run as written, offline.

The commands are read from README.md itself, so the test fails when the README changes into something that does not
run. Only paths are replaced (the shared lite0 file by a random-init one, the shared data sets by generated ones in
the same layouts) and each ``train`` is shrunk (one short epoch, a few CRR steps, 64 px images).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from anomalib_crr.data import make_synthetic_mvtec

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Your own images (offline)"
SHRINK = {
    "MFRNet": "--trainer.max_epochs 1 --trainer.limit_train_batches 2",
    "crr_cnn": "--model.stage1_steps 2 --model.stage2_steps 1",
}
COMMON = "--data.num_workers 0 --data.train_batch_size 4 --data.eval_batch_size 4 --trainer.logger false"


def readme_commands() -> list[str]:
    """The first ``bash`` block of the README's own-data section, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no bash block in the README's own-data section"
    joined = block.group(1).replace("\\\n", " ")
    lines = (re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines())  # comments, whole or trailing
    return [line for line in lines if line and not line.startswith("#")]


def _lite0_file(path: Path) -> Path:
    """A random-init timm tf_efficientnet_lite0 in the shared file's format (safetensors)."""
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict(), str(path))
    return path


def _folder_layout(mvtec_category: Path, root: Path) -> Path:
    """The magnetic tile layout (``train/good``, ``test/good``, ``test/crack``, ``ground_truth/crack``)."""
    shutil.copytree(mvtec_category / "train" / "good", root / "train" / "good")
    shutil.copytree(mvtec_category / "test" / "good", root / "test" / "good")
    shutil.copytree(mvtec_category / "test" / "scratch", root / "test" / "crack")
    shutil.copytree(mvtec_category / "ground_truth" / "scratch", root / "ground_truth" / "crack")
    return root


def _shrunk(command: str) -> str:
    if not command.startswith("anomalib-crr train"):
        return command
    kind = "crr_cnn" if "crr_cnn.yaml" in command else "MFRNet"
    return f"{command} {SHRINK[kind]} {COMMON}"


def test_readme_own_data_commands_run_offline(tmp_path: Path) -> None:
    commands = readme_commands()
    assert sum(command.startswith("anomalib-crr train") for command in commands) >= 3  # MVTecAD x2, Folder
    data = make_synthetic_mvtec(
        tmp_path / "mvtec3d_rgb", categories=["washer"], num_train=8, num_test_good=2, num_test_defect=2, image_size=64
    )
    (data / "washer").rename(data / "tire")  # the README's category name
    folder = _folder_layout(data / "tire", tmp_path / "magnetic_tile" / "mt")
    images = tmp_path / "images"
    shutil.copytree(data / "tire" / "test" / "scratch", images)
    replacements = {
        "../shared/weights/tf_efficientnet_lite0.in1k.safetensors": str(_lite0_file(tmp_path / "lite0.safetensors")),
        "../shared/data/mvtec3d_rgb": str(data),
        "../shared/data/magnetic_tile/mt": str(folder),
        "configs/model/crr_cnn.yaml": str(ROOT / "configs" / "model" / "crr_cnn.yaml"),
        "path/to/images": str(images),
    }
    script = ["set -euo pipefail", f'export PATH="{Path(sys.executable).parent}:$PATH"']
    for command in commands:
        line = command
        for old, new in replacements.items():
            line = line.replace(old, new)
        script.append(_shrunk(line))
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=work,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=1400,
        check=False,
    )
    assert result.returncode == 0, "\n".join(script) + "\n" + result.stderr[-4000:]
    run = work / "results" / "MFRNet" / "MVTecAD" / "tire" / "latest"
    assert (run / "weights" / "openvino" / "model.xml").is_file()
    assert len(list((run / "predictions").glob("v*/predictions.csv"))) == 1
    assert list((work / "results" / "CRR" / "MVTecAD" / "tire").glob("v*/weights/lightning/model.ckpt"))
    assert list((work / "results" / "MFRNet" / "magnetic_tile").rglob("model.ckpt"))
    assert "Downloading" not in result.stderr
