"""AutoZOOM against ZOO on ``papernot-mnist`` (full MNIST): queries to the first success.

Tu et al. 2019 (AutoZOOM, AAAI) report that, at the same success rate as ZOO, AutoZOOM needs at
least 93% fewer queries to its first adversarial example. This script attacks the first ``--n``
correctly classified full-MNIST test images, untargeted, with:

* ``zoo``: ZOO-ADAM with the paper's MNIST settings (128 coordinates per iteration, Adam rate
  0.01, h = 1e-4, no hierarchy, no importance sampling), ``--zoo-bs`` binary-search steps of
  ``--zoo-steps`` iterations from c = 1;
* ``autozoom-bilin``: AutoZOOM with bilinear reduction to 14x14 (beta = 1/196), q = 1 until the
  first success and q = 4 after it, ``--autozoom-steps`` iterations from c = 1;
* ``autozoom-ae``: the same with the decoder of a convolutional autoencoder (28x28 -> 14x14x1)
  trained here on ``--codec-train`` unlabeled training images for ``--codec-epochs`` epochs, or
  loaded from ``--codec`` (``--codec-epochs 0`` and no ``--codec`` skips this row).

For each: success rate, mean and median queries to the first success (over the successes;
the ``queries_to_success`` extra), mean total queries, mean L2 distortion of the successes,
wall time; and the reduction of the mean queries to first success against ZOO. The issue's
bar: equal success (>= 99%) and a reduction of >= 90%.

All samples of a method run in one attack call, so each iteration sends every sample's probes in
one oracle call (``--batch`` splits them). Writes ``bench/out/autozoom.json``.

Run:

    python bench/reproduce_autozoom.py --n 10 --threads 1            # CPU, a few minutes
    python bench/reproduce_autozoom.py --device cuda                  # n = 100

Reference:
    Tu et al. 2019, "AutoZOOM: Autoencoder-based Zeroth Order Optimization Method for Attacking
    Black-box Neural Networks", AAAI, Table 1 (MNIST); Chen et al. 2017, "ZOO", AISec.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import first_correct, load_frozen
from advlab.attacks import autozoom, zoo
from advlab.data import load_dataset
from advlab.fileio import atomic_write_text
from advlab.models.codec import load_codec, save_codec, train_codec
from advlab.threat import ThreatModel

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_MODEL = REPO / "bench" / "out" / "papernot-mnist-full.safetensors"


def run_method(name: str, fn: Any, model: Any, x: torch.Tensor, y: torch.Tensor, batch: int,
               **params: Any) -> dict[str, Any]:  # fmt: skip
    threat = ThreatModel("l2", math.inf)
    t0 = time.perf_counter()
    parts = [fn(model, x[i : i + batch], y[i : i + batch], threat, seed=0, **params)
             for i in range(0, len(x), batch)]  # fmt: skip
    if x.is_cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    success = torch.cat([r.success for r in parts]).cpu()
    qts = torch.cat([r.extras["queries_to_success"] for r in parts]).cpu().double()
    total = torch.cat([r.queries for r in parts]).cpu().double()
    l2 = torch.cat([r.norms for r in parts]).cpu().double()
    ok = ~torch.isnan(qts)
    out = {
        "method": name, "params": parts[0].params, "n": len(x),
        "success_rate": float(success.double().mean()),
        "first_success_rate": float(ok.double().mean()),
        "mean_queries_to_success": float(qts[ok].mean()) if ok.any() else math.nan,
        "median_queries_to_success": float(qts[ok].median()) if ok.any() else math.nan,
        "mean_total_queries": float(total.mean()),
        "mean_l2": float(l2[success].mean()) if success.any() else math.nan,
        "median_l2": float(l2[success].median()) if success.any() else math.nan,
        "wall_s": wall,
        "queries_to_success": qts.tolist(),
        "l2": l2.tolist(),
        "success": success.tolist(),
    }  # fmt: skip
    print(f"{name}: success {out['success_rate']:.1%}, mean queries to success "
          f"{out['mean_queries_to_success']:.0f}, mean L2 {out['mean_l2']:.3f}, {wall:.0f} s",
          flush=True)  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=0, help="samples per attack call (0 = all)")
    p.add_argument("--zoo-steps", type=int, default=1000)
    p.add_argument("--zoo-bs", type=int, default=1, help="ZOO binary-search steps")
    p.add_argument("--autozoom-steps", type=int, default=2000)
    p.add_argument("--codec", default=None, help="a codec saved by advlab train-codec")
    p.add_argument("--codec-epochs", type=int, default=10)
    p.add_argument("--codec-train", type=int, default=20000, help="training images for the AE")
    p.add_argument("--skip-zoo", action="store_true")
    p.add_argument(
        "--no-tf32-off",
        action="store_true",
        help="keep PyTorch's default TF32 convolutions on a GPU (noisier scores)",
    )
    p.add_argument("--out", default=str(REPO / "bench" / "out" / "autozoom.json"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    # Finite differences at h = 1e-4 need the model's full float32 precision. TF32 convolutions
    # (PyTorch's default for cuDNN) round the scores to ~1e-3 relative. On the same 10 images,
    # ZOO needed 1.67x the queries to its first success on an H200 with TF32 as on the CPU in
    # float32 (AutoZOOM: 1.0x); that TF32 is the cause is likely but was not measured, so GPU
    # runs turn it off unless --no-tf32-off.
    torch.backends.cudnn.allow_tf32 = not a.no_tf32_off
    torch.backends.cuda.matmul.allow_tf32 = False
    model = load_frozen(a.model).to(dev)
    splits = load_dataset("mnist", data_dir=a.data_dir)
    x, y, idx = first_correct(model.cpu(), splits.test, a.n)
    model.to(dev)
    x, y = x.to(dev), y.to(dev)
    batch = a.batch or len(x)
    rows: list[dict[str, Any]] = []
    if not a.skip_zoo:
        rows.append(run_method("zoo", zoo, model, x, y, batch, steps=a.zoo_steps,
                               binary_search_steps=a.zoo_bs))  # fmt: skip
    rows.append(run_method("autozoom-bilin", autozoom, model, x, y, batch,
                           reduction="bilinear", steps=a.autozoom_steps))  # fmt: skip
    codec = a.codec
    codec_info: dict[str, Any] = {}
    if codec is None and a.codec_epochs > 0:
        assert splits.train is not None
        t0 = time.perf_counter()
        ae, mse = train_codec(splits.train.x[: a.codec_train], epochs=a.codec_epochs,
                              device=dev, seed=0)  # fmt: skip
        codec = str(Path(a.out).with_name("autozoom-codec.safetensors"))
        save_codec(ae, codec, dataset="mnist", loss=mse, seed=0)
        codec_info = {"trained_on": a.codec_train, "epochs": a.codec_epochs, "mse": mse,
                      "train_s": time.perf_counter() - t0}  # fmt: skip
        print(f"codec: {a.codec_train} images, {a.codec_epochs} epochs, MSE {mse:.5f}", flush=True)
    if codec is not None:
        load_codec(codec)  # fails here, with its path, if it is not a codec
        rows.append(run_method("autozoom-ae", autozoom, model, x, y, batch, reduction="ae",
                               codec=codec, steps=a.autozoom_steps))  # fmt: skip
    ref = next((r for r in rows if r["method"] == "zoo"), None)
    print()
    print(f"{'method':<16}{'success':>9}{'mean q1':>10}{'median q1':>11}{'reduction':>11}"
          f"{'total q':>10}{'mean L2':>9}{'wall s':>9}")  # fmt: skip
    for r in rows:
        red = math.nan
        if ref is not None and r is not ref:
            red = 1 - r["mean_queries_to_success"] / ref["mean_queries_to_success"]
        r["reduction_vs_zoo"] = red
        print(f"{r['method']:<16}{r['success_rate']:>9.1%}{r['mean_queries_to_success']:>10.0f}"
              f"{r['median_queries_to_success']:>11.0f}"
              f"{'-' if math.isnan(red) else f'{red:.1%}':>11}{r['mean_total_queries']:>10.0f}"
              f"{r['mean_l2']:>9.3f}{r['wall_s']:>9.0f}")  # fmt: skip
    if ref is not None:
        ok = all(r["success_rate"] >= 0.99 and r["reduction_vs_zoo"] >= 0.90
                 for r in rows if r is not ref) and ref["success_rate"] >= 0.99  # fmt: skip
        print(f"\nbar (success >= 99% for all, mean queries to first success -90%): "
              f"{'met' if ok else 'NOT met'}")  # fmt: skip
    payload = {
        "bench": "reproduce_autozoom", "n": len(x), "indices": idx.tolist(),
        "model": a.model, "device": str(dev), "threads": a.threads,
        "torch": torch.__version__, "machine": platform.machine(), "codec": codec,
        "tf32_convolutions": torch.backends.cudnn.allow_tf32,
        "codec_training": codec_info, "rows": rows, "argv": sys.argv[1:],
    }  # fmt: skip
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
