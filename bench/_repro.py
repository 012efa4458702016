"""What the certification benchmarks share with the reproduction catalog: the command-line
options and a resumable :class:`advlab.reproduce.Context` (models trained once into
``bench/out/<name>[-quick]/`` and reused). Not part of the library; the paper reproductions
themselves are ``advlab reproduce NAME``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from advlab.reproduce import Context

OUT = Path(__file__).resolve().parent / "out"


def options(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="mnist5k and small budgets: minutes on a CPU")  # fmt: skip
    p.add_argument("--data-dir", default=str(OUT.parents[1].parent / "shared" / "data"),
                   help="folder holding mnist/ (IDX)")  # fmt: skip
    p.add_argument("--out", default=None, help="output folder (default bench/out/<name>)")
    p.add_argument("--n", type=int, default=None, help="test images to evaluate on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda")
    p.add_argument("--fresh", action="store_true", help="recompute cached evaluations")
    return p


def context(name: str, args: argparse.Namespace) -> Context:
    """The script's context: mnist5k with ``--quick``, else full MNIST from ``--data-dir``."""
    torch.set_num_threads(args.threads)
    out = Path(args.out or OUT / f"{name}{'-quick' if args.quick else ''}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    params = {"data": "mnist5k" if args.quick else "mnist", "seed": 0}
    return Context(None, params, quick=bool(args.quick), out=out,
                   data_dir=None if args.quick else args.data_dir, device=device,
                   fresh=bool(args.fresh),
                   progress=lambda e: print(e["message"], file=sys.stderr) if "message" in e
                   else None)  # fmt: skip
