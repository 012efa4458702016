"""The ``advlab`` command line.

Every user error (an :class:`~advlab.errors.AdvlabError`) is printed as one line naming the
problem and the fix, with exit code 2 and no traceback. Ctrl-C exits with 130 and keeps all
completed work (re-run the same command to resume).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from advlab import __version__
from advlab.errors import AdvlabError

# Piped output (CI logs, files) gets a wide table instead of rich's 80-column default.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
stdout = Console(width=None if sys.stdout.isatty() else 120)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


def _num(v: Any, fmt: str = ".4f") -> str:
    return "-" if not isinstance(v, int | float) or v != v else format(v, fmt)


def _names(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


class _Bar:
    """A rich progress bar fed by the library's progress events."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        )  # fmt: skip
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, event: dict[str, Any]) -> None:
        if "message" in event:
            console.print(f"[dim]{event['message']}[/dim]")
        stage = str(event.get("stage", ""))
        done, total = event.get("done"), event.get("total")
        if done is None or total is None:
            return
        if stage == "train":
            label = f"train epoch {event.get('epoch', '?')}"
        elif stage == "attack":
            label = f"{event.get('attack')} eps={event.get('eps')}"
        else:
            label = stage
        key = label
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[key], completed=done, total=total)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdvlabError as e:
            console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted:[/yellow] completed work is saved; run the same command "
                "again to resume"
            )
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="advlab")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Attack, harden, certify and report on the adversarial robustness of classifiers."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")  # fmt: skip


def _store(path: str | None) -> Any:
    from advlab.paths import store_path
    from advlab.store import RunStore

    return RunStore(Path(path) if path else store_path())


@cli.command()
@click.option(
    "--model",
    default="papernot-mnist",
    show_default=True,
    help="Zoo name (trained and cached) or path to a saved model.",
)
@click.option("--factory", default=None, help="package.module:function building your model.")
@click.option("--data", default="mnist5k", show_default=True, help="Dataset name or .npz path.")
@click.option("--data-dir", default=None, help="Folder of standard datasets (else $ADVLAB_DATA).")
@click.option("--norm", default="linf", show_default=True)
@click.option(
    "--eps",
    "eps",
    default="0,0.05,0.1,0.15,0.2,0.25,0.3",
    show_default=True,
    help="Comma-separated eps grid.",
)
@click.option("--attacks", default="fgsm,pgd", show_default=True)
@click.option("--steps", default=40, show_default=True, help="Iterations of iterative attacks.")
@click.option("-n", "--n", "n", default=1000, show_default=True, help="Test samples (0 = all).")
@click.option("--batch-size", default=250, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out", "out_dir", default="advlab-out", show_default=True, help="Folder for reports."
)
@click.option("--store", default=None, help="Run store file (default: ~/.local/share/advlab).")
@click.option(
    "--unsafe-allow-pickle",
    is_flag=True,
    help="Allow loading pickled models. This executes code from the file.",
)
def audit(model: str, factory: str | None, data: str, data_dir: str | None, norm: str, eps: str,
          attacks: str, steps: int, n: int, batch_size: int, seed: int, out_dir: str,
          store: str | None, unsafe_allow_pickle: bool) -> None:  # fmt: skip
    """Audit a model: clean accuracy, FGSM and PGD over an eps grid, HTML/JSON report."""
    from advlab.audit import AuditConfig, run_audit

    cfg = AuditConfig(
        model=model, data=data, data_dir=data_dir, factory=factory, norm=norm,
        eps=_floats(eps), attacks=_names(attacks), steps=steps, n=n or None,
        batch_size=batch_size, seed=seed, unsafe_allow_pickle=unsafe_allow_pickle,
    )  # fmt: skip
    with _Bar() as bar:
        res = run_audit(cfg, store=_store(store), out_dir=Path(out_dir), progress=bar)
    ev = res.evaluation
    lo, hi = ev.clean_ci
    stdout.print(f"model: {model} ({res.model_info.get('source', '')})", highlight=False)
    stdout.print(f"data: {data}, {ev.n} test samples; clean accuracy {ev.clean_accuracy:.2%} "
                 f"(95% CI {lo:.2%}-{hi:.2%})", highlight=False)  # fmt: skip
    table = Table(title=f"robust accuracy under {norm} attacks (95% Wilson interval)")
    for col in ("attack", "eps", "robust acc", "95% CI", "success", "median norm", "time s"):
        table.add_column(col, justify="left" if col == "attack" else "right", no_wrap=True)
    for r in ev.rows:
        table.add_row(
            str(r["attack"]), f"{r['eps']:g}", f"{r['robust_accuracy']:.1%}",
            f"{r['ci_low']:.1%}-{r['ci_high']:.1%}", f"{r['success_rate']:.1%}",
            _num(r.get("median_norm")), f"{r.get('wall_time') or 0:.1f}",
        )  # fmt: skip
    stdout.print(table)
    stdout.print(f"run: {res.run_id}", highlight=False)
    stdout.print(f"report: {res.html}", highlight=False, soft_wrap=True)
    stdout.print(f"json: {res.json}", highlight=False, soft_wrap=True)


@cli.command("train")
@click.option("--model", default="papernot-mnist", show_default=True, help="Zoo architecture.")
@click.option("--data", default="mnist5k", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--recipe", default="standard", show_default=True)
@click.option("--epochs", default=8, show_default=True)
@click.option("--batch-size", default=64, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--optimizer", default="adam", show_default=True)
@click.option("--scheduler", default="none", show_default=True, help="none, cosine or step.")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", default=None, help="Output path (default: <model>-<data>.safetensors).")
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Continue from the checkpoint beside --out if there is one.",
)
def train_cmd(model: str, data: str, data_dir: str | None, recipe: str, epochs: int,
              batch_size: int, lr: float, optimizer: str, scheduler: str, seed: int,
              out: str | None, resume: bool) -> None:  # fmt: skip
    """Train a zoo model; checkpoints every epoch and resumes exactly after an interrupt."""
    from advlab.data import load_dataset
    from advlab.defenses import TrainConfig, evaluate_accuracy, train
    from advlab.errors import InputError
    from advlab.models import build_model, save_model

    splits = load_dataset(data, data_dir=data_dir)
    if splits.train is None:
        raise InputError(f"dataset {data!r} has no training split; use one with x_train/y_train")
    c, h, w = splits.train.input_shape
    net = build_model(model, seed=seed, num_classes=splits.train.num_classes, in_shape=(c, h, w))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                      scheduler=scheduler, seed=seed, recipe=recipe)  # fmt: skip
    dest = Path(out) if out else Path(f"{model}-{data}.safetensors")
    ckpt = dest.with_suffix(".ckpt")
    with _Bar() as bar:
        train(net, splits.train, cfg, checkpoint_path=ckpt, resume=resume, progress=bar)
    net.eval()
    acc = evaluate_accuracy(net, splits.test)
    path = save_model(
        net, dest, arch=model, arch_kwargs={"num_classes": splits.train.num_classes,
                                            "in_shape": [c, h, w]},
        dataset=data, clean_accuracy=acc,
        recipe={"name": recipe, "epochs": epochs, "batch_size": batch_size, "lr": lr,
                "optimizer": optimizer, "scheduler": scheduler}, seed=seed,
    )  # fmt: skip
    ckpt.unlink(missing_ok=True)
    stdout.print(f"test accuracy {acc:.2%}; saved {path}")


@cli.command("list")
@click.argument(
    "kind", type=click.Choice(["attacks", "models", "datasets", "recipes", "certifiers"])
)
def list_cmd(kind: str) -> None:
    """List registered components with a one-line description each."""
    from advlab.registry import REGISTRIES

    entries = REGISTRIES[kind].describe()
    if not entries:
        stdout.print(f"no {kind} registered yet")
        return
    width = max(len(n) for n in entries)
    for name, desc in entries.items():
        stdout.print(f"{name:<{width}}  {desc}", highlight=False)


@cli.group()
def runs() -> None:
    """Inspect the run store."""


@runs.command("list")
@click.option("--store", default=None)
@click.option("--limit", default=20, show_default=True)
def runs_list(store: str | None, limit: int) -> None:
    """List recent runs."""
    rs = _store(store).list_runs(limit=limit)
    if not rs:
        stdout.print("no runs yet; run `advlab audit`")
        return
    table = Table()
    for col in ("id", "kind", "status", "created", "summary"):
        table.add_column(col, no_wrap=True)
    for r in rs:
        s = r.get("summary") or {}
        acc = s.get("clean_accuracy")
        table.add_row(r["id"], r["kind"], r["status"], str(r["created"])[:19],
                      "" if acc is None else f"clean {acc:.2%}")  # fmt: skip
    stdout.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--store", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
def runs_show(run_id: str, store: str | None, as_json: bool) -> None:
    """Show one run and its evaluations."""
    r = _store(store).get_run(run_id)
    if as_json:
        stdout.print_json(json.dumps(r, default=str))
        return
    stdout.print(f"run {r['id']}  kind={r['kind']}  status={r['status']}  created={r['created']}")
    cfg = r.get("config") or {}
    stdout.print("config: " + json.dumps(cfg, default=str), highlight=False)
    table = Table()
    for col in ("attack", "norm", "eps", "n", "robust acc", "95% CI", "success", "time (s)"):
        table.add_column(col)
    for e in r.get("evaluations", []):
        ra = e.get("robust_accuracy")
        table.add_row(
            str(e["attack"]), str(e["norm"]), f"{e['eps']:g}", str(e.get("n")),
            "-" if ra is None else f"{ra:.2%}",
            "-" if e.get("ci_low") is None else f"[{e['ci_low']:.2%}, {e['ci_high']:.2%}]",
            "-" if e.get("success_rate") is None else f"{e['success_rate']:.2%}",
            "-" if e.get("wall_time") is None else f"{e['wall_time']:.1f}",
        )  # fmt: skip
    stdout.print(table)


def main() -> None:
    cli(prog_name="advlab")


if __name__ == "__main__":
    main()
