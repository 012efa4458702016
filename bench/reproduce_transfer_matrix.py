"""The cross-technique transferability matrix on full MNIST (Papernot, McDaniel & Goodfellow
2016), through `advlab.transfer.run_transfer_matrix` (what `advlab transfer-matrix` runs).

DNN: the zoo CNN already trained on full MNIST (bench/out/papernot-mnist-full.safetensors),
queried as a target through ONNX Runtime (exported inside the run). LR, linear SVM, decision tree
and kNN (k = 5): scikit-learn, trained here on the first --train-size training images. Ens:
majority vote of the five. FGSM L-inf eps = 0.3 on the first --n test images: white-box on DNN,
LR and SVM (the linear models through their exact torch twins); through a 200-200 MLP substitute
(150 seeds from the end of the test set, 6 rounds) trained on the labels of DT, kNN and Ens.
Writes bench/out/transfer-matrix/ (JSON, PNG heat map, HTML).

Compare with the paper's matrix (their models and attacks differ: e.g. their SVM and tree examples
come from model-specific attacks, not substitutes).

    python bench/reproduce_transfer_matrix.py --threads 1
"""

from __future__ import annotations

import logging
import sys

import torch

from advlab.transfer import MatrixConfig, run_transfer_matrix
from advlab.transfer.matrix import NAMES
from reproduce_substitute import DATA_DIR, OUT, log, options


def main() -> None:
    p = options(__doc__, 1000)
    p.add_argument("--train-size", type=int, default=None, help="training images (default all)")
    p.add_argument("--tag", default="", help="suffix of the output folder")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cfg = MatrixConfig(
        data="mnist5k" if args.quick else "mnist", data_dir=None if args.quick else DATA_DIR,
        n=min(args.n, 500) if args.quick else args.n, eps=0.3,
        train_size=args.train_size, dnn_path=str(OUT / "papernot-mnist-full.safetensors"),
        onnx=True, seed=args.seed, device=args.device, rounds=3 if args.quick else 6,
    )  # fmt: skip
    res = run_transfer_matrix(cfg, out_dir=OUT / f"transfer-matrix{'-quick' if args.quick else ''}{args.tag}",
                              progress=lambda e: log(str(e.get("message", ""))))  # fmt: skip
    names = [NAMES[f] for f in res.families]
    print(f"Transferability matrix: % of FGSM eps=0.3 examples from the source (row) that the "
          f"target (column) misclassifies; {res.data}, n={res.n}")  # fmt: skip
    print(f"{'source':24}" + "".join(f"{n:>7}" for n in names))
    for f, row in zip(res.families, res.matrix, strict=True):
        print(
            f"{NAMES[f] + ' (' + res.method[f] + ')':24}" + "".join(f"{100 * v:>7.1f}" for v in row)
        )
    print(
        f"{'clean error':24}" + "".join(f"{100 * res.clean_error[f]:>7.1f}" for f in res.families)
    )
    print(f"{'test accuracy':24}" + "".join(f"{100 * res.accuracy[f]:>7.1f}" for f in res.families))
    for f, s in res.substitutes.items():
        print(
            f"substitute of {NAMES[f]}: {s['queries']} label queries, agreement {s['agreement']:.1%}"
        )
    print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res.seconds.items()))
    print(f"({args.threads} thread(s), {args.device})")
    for kind, path in res.files.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
