"""Smoke test of an installed anomalib-crr wheel or sdist, run by `.ci/run` in a fresh virtual environment.

It must import the *installed* package (not the source tree), see the start-up hook, register both models
with anomalib and run one tiny forward pass of each.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import torch

import anomalib_crr
from anomalib_crr.demo import SMOKE_MODEL_ARGS

installed_at = Path(anomalib_crr.__file__).resolve()
assert "site-packages" in installed_at.parts, f"imported from the source tree, not the install: {installed_at}"
assert anomalib_crr.__version__ == importlib.metadata.version("anomalib-crr"), "version mismatch"

from anomalib.models import CRR, MFRNet, get_model  # noqa: E402  (needs the hook or the import above)

# The demo's small CRR settings ship in the wheel; random-init encoder, no download.
crr = get_model({"class_path": "CRR", "init_args": {**SMOKE_MODEL_ARGS, "encoder_weights": None}})
mfrnet = get_model("mfrnet", backbone="tf_efficientnet_lite0", pre_trained=False)
assert isinstance(crr, CRR)
assert isinstance(mfrnet, MFRNet)
with torch.no_grad():
    crr_out = crr.model.eval()(torch.rand(1, 3, 112, 112))
    mfrnet_out = mfrnet.model.eval()(torch.rand(1, 3, 128, 128))
assert torch.isfinite(crr_out.pred_score).all()
assert torch.isfinite(mfrnet_out.pred_score).all()

# The .pth start-up hook: a fresh interpreter resolves the short name without importing the plugin itself.
hook = subprocess.run(
    [sys.executable, "-c", "from anomalib.models import list_models; print('c_r_r' in list_models())"],
    capture_output=True,
    text=True,
    check=True,
)
assert hook.stdout.strip() == "True", hook.stdout + hook.stderr
print(f"installed anomalib-crr {anomalib_crr.__version__} from {installed_at.parent}: OK")
