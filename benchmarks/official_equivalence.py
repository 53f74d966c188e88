"""Numerical equivalence of anomalib-crr's CRR with the official CRR-MUAD model, stage by stage.

Builds the official model from a checkout the user gives (nothing of it is copied here): the DINOv2-R encoder
through the checkout's ``models/vit_encoder.load`` (its weight download redirected to a local file of random
weights), ``bMlp6``, 8 ``Block(attn=LinearAttention2)`` decoder blocks, ``ViTill`` and
``DecoderReconstructive`` exactly as ``dinomaly_realiad_uni_second.py`` / ``_test.py`` build them. Random
weights (LayerScale, BatchNorm statistics and the position table are randomised too, so that no stage is
close to the identity) are saved as the official scripts save them (``torch.save(model.state_dict())``) and
loaded into ours with ``CRR.from_official_checkpoint``. Both sides get the same images and the same random
bottleneck mask (``mask_at_inference="random"``, the RNG reseeded before each side's forward), and the
maximum absolute difference is printed at every stage. Exit status 1 if a compared point (other than the
documented blur border) differs by more than ``--tolerance`` (1e-4).

Usage::

    python benchmarks/official_equivalence.py --official /path/to/CRR-MUAD [--arch base] [--size 392]
        [--images a.png b.png] [--markdown out.md]

ViT-B at 392² with the 192-wide seg head (the released configuration) takes a few minutes on a 2-core CPU;
``--arch small`` does not run: the official seg head's last stage is 48
channels at every width, ours scales with ``seg_base_width`` (CRR README deviation 20), so the loader refuses it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.machinery
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TARGET_LAYERS = [2, 3, 4, 5, 6, 7, 8, 9]
GROUPS = [[0, 1, 2, 3], [4, 5, 6, 7]]
ARCHS = {"small": (384, 6), "base": (768, 12)}
BLUR_BORDER = 2  # official: zero padding; anomalib's GaussianBlur2d: reflection (README deviation)


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="a checkout of github.com/Qiqigeww/CRR-MUAD")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="base")
    parser.add_argument("--size", type=int, default=392, help="input side (multiple of 14)")
    parser.add_argument("--batch", type=int, default=2, help="random images (in addition to --images)")
    parser.add_argument("--images", type=Path, nargs="*", default=[], help="real images, resized 448 -> crop 392")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table here")
    return parser.parse_args()


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds top-level modules in the official checkout only; everything else falls through to the usual finders."""

    def __init__(self, checkout: Path) -> None:
        self.checkout = str(checkout)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        """A top-level name found in the checkout; submodules resolve through their package's ``__path__``."""
        if path is not None:
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self.checkout], target)


@contextlib.contextmanager
def official_imports(checkout: Path) -> Iterator[None]:
    """Resolve the checkout's top-level packages (``models``, ``dinov2``, ...) first inside this block.

    The official code is not an installable package: its modules import each other by top-level name. A finder
    in front of ``sys.meta_path`` gives them those names without editing ``sys.path``, and is removed on exit.
    """
    if not (checkout / "models" / "uad.py").is_file():
        msg = f"'{checkout}' is not a CRR-MUAD checkout (no models/uad.py)"
        raise SystemExit(msg)
    finder = _CheckoutFinder(checkout)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def build_official(arch: str, weights_dir: Path) -> tuple[nn.Module, nn.Module]:
    """The official stage-I ``ViTill`` and the seg net, as the official scripts build them, random weights."""
    from dinov2.models import vision_transformer as official_dinov2
    from models import vit_encoder
    from models.uad import ViTill
    from models.vision_transformer import Block, DecoderReconstructive, LinearAttention2, bMlp6
    from torch.nn.init import trunc_normal_

    embed_dim, num_heads = ARCHS[arch]
    # vit_encoder.load downloads Meta's weights; give it a local file of random weights for the same model.
    builder = official_dinov2.__dict__[f"vit_{arch}"]
    template = builder(patch_size=14, img_size=518, block_chunks=0, init_values=1e-8, num_register_tokens=4)
    randomise(template)
    weights = weights_dir / "dinov2_random.pth"
    torch.save(template.state_dict(), weights)
    vit_encoder.download_cached_file = lambda *args, **kwargs: str(weights)
    encoder = vit_encoder.load(f"dinov2reg_vit_{arch}_14")

    bottleneck = nn.ModuleList([bMlp6(embed_dim, embed_dim * 4, embed_dim, drop=0.4, lambda_mgd=0.4)])
    decoder = nn.ModuleList(
        Block(
            dim=embed_dim,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-8),
            attn_drop=0.0,
            attn=LinearAttention2,
        )
        for _ in range(8)
    )
    model = ViTill(
        encoder=encoder,
        bottleneck=bottleneck,
        decoder=decoder,
        target_layers=TARGET_LAYERS,
        mask_neighbor_size=0,
        fuse_layer_encoder=GROUPS,
        fuse_layer_decoder=GROUPS,
    )
    for module in nn.ModuleList([bottleneck, decoder]).modules():  # the stage-I script's init, then larger
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.01, a=-0.03, b=0.03)
            nn.init.normal_(module.bias, std=0.02)
    randomise(decoder)
    seg_net = DecoderReconstructive(base_width=2 * embed_dim // 8, out_channels=2)
    for module in seg_net.modules():  # the stage-II script's weights_init
        if isinstance(module, nn.Conv2d):
            module.weight.data.normal_(0.0, 0.02)
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.data.normal_(1.0, 0.02)
            module.bias.data.fill_(0)
    randomise(seg_net)
    return model.eval(), seg_net.eval()


def randomise(module: nn.Module) -> None:
    """Move the parameters that random init leaves at identity-like values away from them."""
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if name.endswith(("ls1.gamma", "ls2.gamma")):
                tensor.uniform_(0.2, 1.0)
            elif name.endswith("pos_embed"):
                tensor.normal_(0.0, 0.5)
            elif name.endswith("running_mean"):
                tensor.normal_(0.0, 0.1)
            elif name.endswith("running_var") or name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                tensor.uniform_(0.5, 1.5)


def load_images(paths: list[Path], size: int, count: int, seed: int) -> torch.Tensor:
    """Random [0, 1] images plus real ones (Resize 448·size/392 → CenterCrop ``size``), (B, 3, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    images = [torch.rand(count, 3, size, size, generator=generator)]
    if paths:
        from torchvision.io import ImageReadMode, read_image
        from torchvision.transforms.v2 import functional as TF  # noqa: N812

        resize = round(size * 448 / 392)
        for path in paths:
            image = read_image(str(path), ImageReadMode.RGB).float() / 255
            image = TF.center_crop(TF.resize(image, [resize, resize], antialias=True), [size, size])
            images.append(image.clamp(0, 1).unsqueeze(0))
    return torch.cat(images)


def official_gaussian(official_utils_dir: Path) -> nn.Module:
    """``utils.get_gaussian_kernel(kernel_size=5, sigma=4)`` of the checkout (its module imports a lot)."""
    try:
        from utils import get_gaussian_kernel

        return get_gaussian_kernel(kernel_size=5, sigma=4)
    except ImportError:  # utils.py needs cv2, skimage, pandas...: rebuild the same kernel
        print(f"(could not import {official_utils_dir / 'utils.py'}; using the same 5x5 sigma-4 kernel, zero pad)")
        coords = torch.arange(5).float() - 2
        kernel = torch.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2 * 16.0))
        conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
        conv.weight.data = (kernel / kernel.sum()).view(1, 1, 5, 5)
        return conv


def capture(modules: list[nn.Module]) -> tuple[list[torch.Tensor], list]:
    """Record each module's output (the first element when it returns a tuple)."""
    outputs: list[torch.Tensor] = []
    handles = [
        module.register_forward_hook(
            lambda _m, _a, out: outputs.append((out[0] if isinstance(out, tuple) else out).detach().clone())
        )
        for module in modules
    ]
    return outputs, handles


def run_official(model: nn.Module, seg_net: nn.Module, blur: nn.Module, images: torch.Tensor, seed: int) -> dict:
    """Every comparison point of the official model: ViTill forward, seg net, then the test script's map."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    blocks, block_handles = capture([model.encoder.blocks[i] for i in TARGET_LAYERS])
    bottleneck, bottleneck_handles = capture([model.bottleneck[0]])
    decoder, decoder_handles = capture(list(model.decoder))
    with torch.no_grad():
        torch.manual_seed(seed)
        en, de, seg_input = model((images - mean) / std)
        logits = seg_net(seg_input)
        seg_map = torch.softmax(logits, dim=1)[:, 1:]
        maps = [
            F.interpolate((1 - F.cosine_similarity(e, d)).unsqueeze(1), size=256, mode="bilinear", align_corners=True)
            for e, d in zip(en, de, strict=True)
        ]  # utils.cal_anomaly_maps(en, de, 256)
        rec_map = torch.cat(maps, dim=1).mean(dim=1, keepdim=True)
        fused = 0.7 * rec_map + 0.3 * seg_map  # evaluation_batch_adeval_three, weighted_sum, alpha 0.7
        smoothed = blur(fused)
        flat = smoothed.flatten(1)
        score = torch.sort(flat, dim=1, descending=True)[0][:, : int(flat.shape[1] * 0.01)].mean(dim=1)
    for handle in [*block_handles, *bottleneck_handles, *decoder_handles]:
        handle.remove()
    return {
        "blocks": blocks,
        "bottleneck": bottleneck[0],
        "decoder": decoder,
        "E": en,
        "D": de,
        "seg_input": seg_input,
        "seg_logits": logits,
        "rec_map": rec_map,
        "fused": fused,
        "smoothed": smoothed,
        "score": score,
    }


def run_ours(module: nn.Module, images: torch.Tensor, seed: int, blur: nn.Module) -> dict:
    """The same points of our model; the RNG is reseeded before each forward that draws the mask."""
    model = module.model
    decoder, handles = capture(list(model.decoder))
    bottleneck, bottleneck_handles = capture([model.bottleneck])
    with torch.no_grad():
        torch.manual_seed(seed)
        tokens = model.encode(images)
        torch.manual_seed(seed)
        encoder_maps, decoder_maps = model.extract_features(images)
        seg_input = model.segmentation_input(encoder_maps, decoder_maps)
        logits = model.segment(encoder_maps, decoder_maps)
        rec_map = model.reconstruction_map(encoder_maps, decoder_maps)
        fused = model.fused_map(encoder_maps, decoder_maps)
        torch.manual_seed(seed)
        output = model(images)
        smoothed = model.gaussian_blur(fused)
        score_official_blur = model.score(blur(fused))  # isolates the padding: the rest of the score is ours
    for handle in [*handles, *bottleneck_handles]:
        handle.remove()
    count = len(model.decoder)
    return {
        "blocks": tokens,
        "bottleneck": bottleneck[0],
        "decoder": decoder[:count],
        "E": encoder_maps,
        "D": decoder_maps,
        "seg_input": seg_input,
        "seg_logits": logits,
        "rec_map": rec_map,
        "fused": fused,
        "smoothed": smoothed,
        "score": output.pred_score,
        "score_official_blur": score_official_blur,
    }


def compare(official: dict, ours: dict) -> list[tuple[str, float, float, str]]:
    """(point, max |official − ours|, max |official|, note) for every compared point."""
    rows = []

    def add(name: str, a: torch.Tensor, b: torch.Tensor, note: str = "") -> None:
        rows.append((name, (a - b).abs().max().item(), a.abs().max().item(), note))

    for index, (a, b) in zip(TARGET_LAYERS, zip(official["blocks"], ours["blocks"], strict=True), strict=True):
        add(f"encoder block {index}", a, b)
    add("bottleneck output", official["bottleneck"], ours["bottleneck"])
    for index, (a, b) in enumerate(zip(official["decoder"], ours["decoder"], strict=True)):
        add(f"decoder block {index}", a, b)
    for group in range(len(GROUPS)):
        add(f"E_{group + 1}", official["E"][group], ours["E"][group])
        add(f"D_{group + 1}", official["D"][group], ours["D"][group])
    add("seg input S", official["seg_input"], ours["seg_input"])
    add("seg logits", official["seg_logits"], ours["seg_logits"])
    add("A_rec (256²)", official["rec_map"], ours["rec_map"])
    add("fused map, before blur", official["fused"], ours["fused"])
    inner = (slice(None), slice(None), slice(BLUR_BORDER, -BLUR_BORDER), slice(BLUR_BORDER, -BLUR_BORDER))
    add("smoothed map, interior", official["smoothed"][inner], ours["smoothed"][inner])
    add("smoothed map, 2-px border", official["smoothed"], ours["smoothed"], "documented: blur padding")
    add("image score", official["score"], ours["score"], "documented: blur padding")
    add("image score, official blur on our fused map", official["score"], ours["score_official_blur"])
    return rows


def main() -> int:
    """Build both models, compare, print the table; 1 if a point is above the tolerance."""
    args = parse_args()
    torch.manual_seed(args.seed)
    from anomalib_crr import CRR

    with official_imports(args.official.resolve()), tempfile.TemporaryDirectory() as tmp:
        official_model, official_seg = build_official(args.arch, Path(tmp))
        blur = official_gaussian(args.official)
        model_path, seg_path = Path(tmp) / "model.pth", Path(tmp) / "Seg_model_7999.pth"
        torch.save(official_model.state_dict(), model_path)  # as dinomaly_realiad_uni_first.py saves it
        torch.save(official_seg.state_dict(), seg_path)  # as dinomaly_realiad_uni_second.py saves it
        embed_dim, _ = ARCHS[args.arch]
        ours = CRR.from_official_checkpoint(
            model_path,
            seg_path,
            encoder_name=f"vit_{args.arch}_patch14_reg4_dinov2",
            encoder_weights=None,
            seg_base_width=2 * embed_dim // 8,
            mask_at_inference="random",
            dtd_dir=None,
        ).eval()
        images = load_images(args.images, args.size, args.batch, args.seed)
        official = run_official(official_model, official_seg, blur, images, args.seed + 1)
    mine = run_ours(ours, images, args.seed + 1, blur)
    rows = compare(official, mine)

    header = f"CRR vs official CRR-MUAD, ViT-{args.arch[0].upper()}/14, {args.size}², {len(images)} images, fp32"
    lines = [header, "", "| point | max \\|official − ours\\| | max \\|official\\| | |", "|---|---|---|---|"]
    failed = []
    for name, diff, scale, note in rows:
        ok = diff <= args.tolerance or bool(note)
        failed += [] if ok else [name]
        status = note or ("ok" if ok else "FAIL")
        lines.append(f"| {name} | {diff:.2e} | {scale:.3g} | {status} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if failed:
        print(f"\n{len(failed)} point(s) above {args.tolerance:g}: {', '.join(failed)}")
        return 1
    print(f"\nEvery compared point agrees within {args.tolerance:g} (documented deviations listed).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
