"""The ``advlab`` command line.

Every user error (an :class:`~advlab.errors.AdvlabError`) is printed as one line naming the
problem and the fix, with exit code 2 and no traceback. Ctrl-C exits with 130 and keeps all
completed work (re-run the same command to resume).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from advlab import __version__
from advlab.errors import AdvlabError, ConfigError

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


def _label(event: dict[str, Any]) -> str:
    stage = str(event.get("stage", ""))
    if stage == "train":
        return f"train epoch {event.get('epoch', '?')}"
    if stage == "attack":
        eps = event.get("eps")
        where = "minimal" if eps == float("inf") else f"eps={eps:g}"
        return f"{event.get('attack')} {event.get('norm')} {where}"
    if stage == "certify":
        eps = event.get("eps")
        where = "radius" if eps == float("inf") else f"eps={eps:g}"
        return f"certify {event.get('method') or event.get('attack')} {event.get('norm')} {where}"
    return stage


class _Rate(ProgressColumn):
    """Samples (or epochs) per second of a task, from rich's speed estimate."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.3g}/s", style="progress.data.speed")


class _Bar:
    """Progress fed by the library's progress events: a rich bar with rate and ETA on a
    terminal, plain lines (one per finished batch, epoch or message, with rate and ETA) when the
    output is piped to a log, and nothing with ``quiet``."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            _Rate(), TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True,
        )  # fmt: skip
        self.tasks: dict[str, Any] = {}
        self.start = time.monotonic()
        self.started: dict[str, tuple[float, int]] = {}
        self.last = self.start

    def __enter__(self) -> _Bar:
        if self.live:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        if "message" in event:
            console.print(f"[dim]{escape(str(event['message']))}[/dim]", highlight=False)
        done, total = event.get("done"), event.get("total")
        if done is None or total is None:
            return
        label = _label(event)
        if not self.live:
            if event.get("event") == "step":
                return  # epochs print their own summary line
            now = time.monotonic()
            note = " (stored)" if event.get("resumed") else ""
            if event.get("resumed") or label not in self.started:
                # a task starts when the one before it ended; stored batches cost nothing
                begin = now if event.get("resumed") else self.last
                self.started[label] = (begin, int(done) if event.get("resumed") else 0)
            t0, d0 = self.started[label]
            self.last = now
            rate = (int(done) - d0) / (now - t0) if now > t0 and int(done) > d0 else None
            eta = (f", ETA {(int(total) - int(done)) / rate:.0f} s"
                   if rate and int(done) < int(total) else "")  # fmt: skip
            speed = f", {rate:.3g}/s" if rate else ""
            console.print(f"{escape(label)}: {done}/{total}{note} "
                          f"[{now - self.start:.0f} s{speed}{eta}]",
                          highlight=False, markup=False)  # fmt: skip
            return
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(escape(label), total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)


#: ``--quiet`` of the long commands.
_quiet = click.option("--quiet", "-q", "quiet", is_flag=True,
                      help="No progress output (results and errors are still printed).")  # fmt: skip


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdvlabError as e:
            console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False,
                          soft_wrap=True)  # fmt: skip
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


def _audit_help() -> str:
    from advlab.registry import ATTACKS
    from advlab.threat import NORMS

    bounded = [n for n in ATTACKS.names() if not ATTACKS.get(n).minimal]
    minimal = [n for n in ATTACKS.names() if ATTACKS.get(n).minimal]
    return (
        "Audit a model: clean accuracy and robust accuracy under attacks over an eps grid, "
        "stored in the run store, with an HTML and a JSON report.\n\n"
        f"Norms: {', '.join(NORMS)}. Attacks: eps-bounded ({', '.join(bounded)}) run at every "
        f"eps; minimal-perturbation ({', '.join(minimal)}) run once and are read at every eps "
        "(`advlab list attacks` describes them).\n\n"
        "Models: a zoo name (trained on --data and cached), or a file: .safetensors (with "
        "its .json from advlab, or with --factory pkg.module:function building the network), "
        "a state_dict .pt/.pth (with --factory), or TorchScript .pt. Data: a dataset name "
        "(`advlab list datasets`) or an .npz with arrays x and y (or x_train, y_train, x_test, "
        "y_test): x uint8 or floats in [0, 1], shaped (N, H, W), (N, H, W, C), (N, C, H, W) "
        "or (N, D); y integer labels (N,). See docs/audit-your-model.md."
    )


@cli.command(help=_audit_help())
@click.option(
    "--model",
    default="papernot-mnist",
    show_default=True,
    help="Zoo name (trained and cached) or path to a saved model.",
)
@click.option("--factory", default=None, help="package.module:function building your model.")
@click.option("--data", default="mnist5k", show_default=True, help="Dataset name or .npz path.")
@click.option("--data-dir", default=None, help="Folder of standard datasets (else $ADVLAB_DATA).")
@click.option("--norm", default="linf", show_default=True, help="linf, l2, l1 or l0.")
@click.option(
    "--eps",
    "eps",
    default="0,0.05,0.1,0.15,0.2,0.25,0.3",
    show_default=True,
    help="Comma-separated eps grid (finite, >= 0).",
)
@click.option("--attacks", default="fgsm,pgd", show_default=True,
              help="Comma-separated registered attacks.")  # fmt: skip
@click.option("--steps", default=40, show_default=True,
              help="Iterations of the eps-bounded iterative attacks (pgd, bim).")  # fmt: skip
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
@click.option(
    "--certify", "certify", is_flag=False, flag_value="crown", default=None, metavar="[METHOD]",
    help="After the attacks, certify each sample's radius with METHOD (default crown; "
    "`advlab list certifiers`): certified accuracy per eps, and certified against attack radii "
    "in the report.",
)  # fmt: skip
@click.option(
    "--access", default="gradients", show_default=True,
    type=click.Choice(["gradients", "scores", "topk", "labels"]),
    help="What the model reveals to the attacks: a black-box audit with scores (square, zoo, "
    "autozoom) or labels only (hopskipjump).",
)  # fmt: skip
@click.option(
    "--queries", type=int, default=None,
    help="Per-sample query budget of each attack (its final verification query included).",
)  # fmt: skip
@click.option("--fresh", is_flag=True,
              help="Compute again even if an identical audit completed before (by default its "
              "stored results are reused).")  # fmt: skip
@click.option("--targeted-grid", is_flag=True,
              help="Also draw C&W's source x target grid in the report: one input per class "
              "attacked toward every other class by a targeted attack (a minimal one such as cw-l2 "
              "if listed, else an iterative one at the largest eps).")  # fmt: skip
@_quiet
def audit(model: str, factory: str | None, data: str, data_dir: str | None, norm: str, eps: str,
          attacks: str, steps: int, n: int, batch_size: int, seed: int, out_dir: str,
          store: str | None, unsafe_allow_pickle: bool, certify: str | None, access: str,
          queries: int | None, fresh: bool, targeted_grid: bool,
          quiet: bool) -> None:  # fmt: skip
    from advlab.audit import AuditConfig, run_audit

    cfg = AuditConfig(
        model=model, data=data, data_dir=data_dir, factory=factory, norm=norm,
        eps=_floats(eps), attacks=_names(attacks), steps=steps, n=n or None,
        batch_size=batch_size, seed=seed, unsafe_allow_pickle=unsafe_allow_pickle,
        certify=certify, access=access, queries=queries, targeted_grid=targeted_grid,
    )  # fmt: skip
    with _Bar(quiet) as bar:
        res = run_audit(cfg, store=_store(store), out_dir=Path(out_dir), progress=bar, fresh=fresh)
    print_audit(res, model, data)


def print_audit(res: Any, model: str, data: str) -> None:
    """The audit's result on stdout: model, data, clean accuracy, the table, run and reports."""
    ev = res.evaluation
    lo, hi = ev.clean_ci
    source = str(res.model_info.get("source", ""))
    same = not source or Path(model).expanduser().resolve() == Path(source).expanduser().resolve()
    shown = model if same else f"{model} ({source})"
    stdout.print(f"model: {shown}", highlight=False, markup=False)
    stdout.print(f"data: {data}, {ev.n} test samples; clean accuracy {ev.clean_accuracy:.2%} "
                 f"(95% CI {lo:.2%}-{hi:.2%})", highlight=False, markup=False)  # fmt: skip
    stdout.print(summary_table(ev))
    for norm, bounds in ev.bounds.items():
        stdout.print(_radius_line(norm, ev.certified[0].method,
                                  [b.certified for b in bounds if b.correct]), highlight=False,
                     markup=False)  # fmt: skip
    note = {"waited": " (completed by another process)",
            "stored": " (reused: an identical audit completed before; --fresh computes again)",
            }.get(res.reused_how or "", "")  # fmt: skip
    stdout.print(f"run: {res.run_id}{note}", highlight=False, markup=False)
    stdout.print(f"report: {res.html}", highlight=False, soft_wrap=True, markup=False)
    stdout.print(f"json: {res.json}", highlight=False, soft_wrap=True, markup=False)


def _certify_help() -> str:
    from advlab.registry import CERTIFIERS

    return (
        "Certify a model on the first --n test samples: certified accuracy at each --eps "
        "(correct, and every margin bound positive on the whole ball) with a Wilson 95% "
        "interval, and with --radius each sample's certified radius (bisection), a lower bound "
        "on its smallest adversarial perturbation.\n\n"
        f"Methods ({', '.join(CERTIFIERS.names())}): ibp is fastest and loosest, alpha-crown "
        "tightest and slowest; crown on a convolutional network can take minutes per batch on "
        "a CPU. Models: a zoo name (trained on --data and cached, as `advlab audit` does) or a "
        "saved model of supported layers (Linear, Conv2d, pooling, BatchNorm, ReLU, sigmoid, "
        "tanh, ... in an nn.Sequential; see docs/models.md)."
    )


@cli.command("certify", help=_certify_help())
@click.option("--model", default="papernot-mnist", show_default=True,
              help="Zoo name (trained and cached) or path to a saved model.")  # fmt: skip
@click.option("--factory", default=None, help="package.module:function building your model.")
@click.option("--data", default="mnist5k", show_default=True, help="Dataset name or .npz path.")
@click.option("--data-dir", default=None, help="Folder of standard datasets (else $ADVLAB_DATA).")
@click.option("--method", default="crown", show_default=True,
              help="Certifier (`advlab list certifiers`).")  # fmt: skip
@click.option("--norm", default="linf", show_default=True, help="linf, l2 or l1.")
@click.option("--eps", "eps", multiple=True, metavar="EPS[,EPS...]",
              help="Radius for certified accuracy; repeatable or comma-separated.")  # fmt: skip
@click.option("--radius", is_flag=True,
              help="Also search each sample's certified radius (mean and median printed).")  # fmt: skip
@click.option("--steps", default=15, show_default=True, help="Bisection steps of --radius.")
@click.option("-n", "--n", "n", default=100, show_default=True, help="Test samples (0 = all).")
@click.option("--batch-size", default=250, show_default=True)
@click.option("--seed", default=0, show_default=True, help="Seed of a zoo model's training.")
@click.option("--out", "out_dir", default=None,
              help="Folder for the JSON result (certify-<method>-<norm>.json).")  # fmt: skip
@click.option("--unsafe-allow-pickle", is_flag=True,
              help="Allow loading pickled models. This executes code from the file.")  # fmt: skip
@_quiet
def certify_cmd(model: str, factory: str | None, data: str, data_dir: str | None, method: str,
                norm: str, eps: tuple[str, ...], radius: bool, steps: int, n: int,
                batch_size: int, seed: int, out_dir: str | None,
                unsafe_allow_pickle: bool, quiet: bool) -> None:  # fmt: skip
    from advlab.audit import CertifyConfig, run_certify

    cfg = CertifyConfig(
        model=model, data=data, data_dir=data_dir, factory=factory, method=method, norm=norm,
        eps=tuple(e for text in eps for e in _floats(text)), radius=radius, steps=steps,
        n=n or None, batch_size=batch_size, seed=seed, unsafe_allow_pickle=unsafe_allow_pickle,
    )  # fmt: skip
    with _Bar(quiet) as bar:
        res = run_certify(cfg, out_dir=Path(out_dir) if out_dir else None, progress=bar)
    print_certify(res, model, data, method, norm)


def print_certify(res: Any, model: str, data: str, method: str, norm: str) -> None:
    """``advlab certify``'s result on stdout."""
    lo, hi = res.clean_ci
    stdout.print(f"model: {model}", highlight=False, markup=False)
    stdout.print(f"data: {data}, {res.n} test samples; clean accuracy {res.clean_accuracy:.2%} "
                 f"(95% CI {lo:.2%}-{hi:.2%})", highlight=False, markup=False)  # fmt: skip
    if res.rows:
        table = Table(title=f"certified accuracy ({escape(method)}, {norm})")
        for col in ("eps", "certified", "95% CI", "time"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in res.rows:
            table.add_row(f"{r.eps:.4g}", f"{r.certified_accuracy:.1%}",
                          f"{r.ci_low:.1%}-{r.ci_high:.1%}", _seconds(r.wall_time))  # fmt: skip
        stdout.print(table)
    if res.radii is not None:
        radii = res.radii[res.correct].tolist()
        stdout.print(_radius_line(norm, method, radii), highlight=False, markup=False)
    if res.json is not None:
        stdout.print(f"json: {res.json}", highlight=False, soft_wrap=True, markup=False)


def summary_table(ev: Any) -> Table:
    """The audit's table: one row per attack and eps, 7 columns that fit 80 characters; with
    certification, a ``certified`` row (certified accuracy) after each eps's worst case."""
    norms = " / ".join(ev.norms)
    title = f"robust accuracy under {norms} attacks (95% Wilson interval)"
    if ev.certified:
        title = f"robust / certified ({ev.certified[0].method}) accuracy, {norms}, 95% Wilson"
    table = Table(title=escape(title))
    for col in ("attack", "eps", "robust", "95% CI", "success", "median", "time"):
        table.add_column(col, justify="left" if col == "attack" else "right", no_wrap=True)
    cert = {(c.norm, c.eps): c for c in ev.certified}
    for r in ev.summaries:
        table.add_row(
            escape(r.attack), f"{r.eps:.4g}", f"{r.robust_accuracy:.1%}",
            f"{r.ci_low:.1%}-{r.ci_high:.1%}", _pct(r.success_rate), _num(r.median_norm, ".4g"),
            _seconds(r.wall_time),
        )  # fmt: skip
        c = cert.get((r.norm, r.eps)) if r.attack == "worst-case" else None
        if c is not None:
            table.add_row("certified", f"{c.eps:.4g}", f"{c.certified_accuracy:.1%}",
                          f"{c.ci_low:.1%}-{c.ci_high:.1%}", "-", "-", _seconds(c.wall_time))  # fmt: skip
    return table


def _radius_line(norm: str, method: str, radii: list[float]) -> str:
    """Mean and median certified radius over the correctly classified samples."""
    if not radii:
        return f"certified {norm} radius ({method}): no sample is classified correctly"
    from statistics import fmean, median

    return (f"certified {norm} radius ({method}) over the {len(radii)} correctly classified "
            f"samples: mean {fmean(radii):.4g}, median {median(radii):.4g}")  # fmt: skip


def _pct(v: float) -> str:
    return "-" if v != v else f"{v:.1%}"


def _seconds(v: float) -> str:
    return f"{v:.1f}s" if v < 120 else f"{v / 60:.1f}m"


def _train_defaults() -> dict[str, Any]:
    from advlab.defenses import TrainConfig

    return TrainConfig().to_dict()


_TD = _train_defaults()


def _key_values(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    """``("eps=0.3", "norm=linf")`` -> ``{"eps": 0.3, "norm": "linf"}``: values are read as JSON
    (numbers, true/false, null, lists) and otherwise kept as strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=option)
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def _train_options(f: Any) -> Any:
    for deco in reversed([
        click.option("--model", default="papernot-mnist", show_default=True,
                     help="Zoo architecture (advlab list models)."),
        click.option("--arch-param", "arch_param", multiple=True, metavar="KEY=VALUE",
                     help="Architecture argument, e.g. width=0.5 (repeatable)."),
        click.option("--data", default="mnist5k", show_default=True),
        click.option("--data-dir", default=None),
        click.option("--epochs", default=_TD["epochs"], show_default=True),
        click.option("--batch-size", default=_TD["batch_size"], show_default=True),
        click.option("--lr", default=_TD["lr"], show_default=True),
        click.option("--optimizer", default=_TD["optimizer"], show_default=True),
        click.option("--scheduler", default=_TD["scheduler"], show_default=True,
                     help="none, cosine, step or cyclic."),
        click.option("--seed", default=_TD["seed"], show_default=True),
        click.option("--val-size", default=500, show_default=True,
                     help="Training samples held out for per-epoch clean and robust validation."),
        click.option("--val-eps", default=None, type=float,
                     help="Radius of the per-epoch PGD validation (default: the recipe's)."),
        click.option("--val-norm", default=None, help="Norm of that validation."),
        click.option("--device", default=None, help="cpu or cuda (default: cpu)."),
        click.option("--resume/--no-resume", default=True, show_default=True,
                     help="Continue from the checkpoint beside --out if there is one."),
        _quiet,
    ]):  # fmt: skip
        f = deco(f)
    return f


def _train_config(o: dict[str, Any], recipe: str, params: dict[str, Any]) -> Any:
    from advlab.defenses import TrainConfig

    return TrainConfig.from_dict({
        **_TD, "epochs": o["epochs"], "batch_size": o["batch_size"], "lr": o["lr"],
        "optimizer": o["optimizer"], "scheduler": o["scheduler"], "seed": o["seed"],
        "recipe": recipe, "recipe_params": params, "val_size": o["val_size"],
        "val_eps": o["val_eps"], "val_norm": o["val_norm"],
    })  # fmt: skip


def _dest(out: str | None, default: str) -> Path:
    from advlab.fileio import check_writable_folder

    dest = Path(out) if out else Path(default)
    if dest.is_dir():
        raise ConfigError(f"--out {dest} is a folder; pass the file to save the model to")
    check_writable_folder(dest.parent, f"--out {dest}")
    return dest


def _fit(o: dict[str, Any], cfg: Any, dest: Path) -> dict[str, Any]:
    from advlab.defenses import train_and_save

    with _Bar(o.get("quiet", False)) as bar:
        _, meta = train_and_save(
            o["model"], o["data"], cfg, dest, data_dir=o["data_dir"], resume=o["resume"],
            progress=bar, arch_kwargs=_key_values(o["arch_param"], "--arch-param"),
            device=o["device"],
        )  # fmt: skip
    stdout.print(f"test accuracy {meta.get('clean_accuracy', float('nan')):.2%}; saved {dest}",
                 highlight=False, markup=False)  # fmt: skip
    stopped = meta.get("extra", {}).get("training", {}).get("stopped")
    if stopped:
        stdout.print(f"stopped early: {stopped}", highlight=False, markup=False)
    return dict(meta)


@cli.command("train")
@click.option("--recipe", default=_TD["recipe"], show_default=True,
              help="Training recipe (advlab list recipes).")  # fmt: skip
@click.option("--param", "param", multiple=True, metavar="KEY=VALUE",
              help="Recipe parameter, e.g. eps=0.3 (repeatable).")  # fmt: skip
@click.option("--out", default=None, help="Output path (default: <model>-<data>.safetensors).")
@_train_options
def train_cmd(recipe: str, param: tuple[str, ...], out: str | None, **o: Any) -> None:
    """Train a zoo model with a recipe; checkpoints every epoch and resumes exactly.

    Each epoch prints its loss, training accuracy and the clean and PGD accuracy on
    --val-size held-out samples. With the default options (and --val-size 0) this
    builds the same model that `advlab audit` trains and caches.

    \b
    Examples:
      advlab train --recipe pgd --param eps=0.3 --param steps=40 --model wong-mnist
      advlab train --recipe fast --param eps=0.3 --scheduler cyclic --lr 5e-3
    """
    from advlab.defenses import build_recipe

    cfg = _train_config(o, recipe, _key_values(param, "--param"))
    build_recipe(cfg.recipe, cfg.recipe_params)  # bad values fail before any work
    dest = _dest(out, f"{o['model']}-{o['data']}.safetensors")
    _fit(o, cfg, dest)


@cli.command("distill")
@click.option("--temperature", default=100.0, show_default=True, help="Distillation temperature T.")
@click.option("--out", default=None,
              help="Student path (default: <model>-<data>-distilled-T<T>.safetensors); the "
              "teacher is saved beside it with -teacher.")  # fmt: skip
@_train_options
def distill_cmd(temperature: float, out: str | None, **o: Any) -> None:
    """Defensive distillation (Papernot et al. 2016): a teacher trained at temperature T
    labels the training data with its softmax at T; a student of the same architecture is
    trained at T on those soft labels and deployed at T = 1 (its plain logits).

    Both halves checkpoint and resume; a finished teacher is reused.
    """
    from advlab.defenses import build_recipe
    from advlab.models import load_model

    dest = _dest(out, f"{o['model']}-{o['data']}-distilled-T{temperature:g}.safetensors")
    teacher = dest.with_name(dest.stem + "-teacher.safetensors")
    teacher_cfg = _train_config(o, "standard", {"temperature": temperature})
    build_recipe(teacher_cfg.recipe, teacher_cfg.recipe_params)  # bad values fail before work
    if teacher.exists():
        _, meta = load_model(teacher)  # a corrupt file fails here, with its path
        want = {
            **teacher_cfg.to_dict(),
            "recipe_params": {"label_smoothing": 0.0, "temperature": temperature},
        }
        if meta.get("recipe") != want or meta.get("arch") != o["model"]:
            raise ConfigError(
                f"{teacher} exists but was not trained with these options (architecture, "
                f"temperature {temperature:g}, data or training settings); delete it or pass "
                "another --out"
            )
        stdout.print(f"teacher: reusing {teacher}", highlight=False, markup=False)
    else:
        stdout.print(f"teacher: training at T={temperature:g}", highlight=False, markup=False)
        _fit(o, teacher_cfg, teacher)
    stdout.print(f"student: training on the teacher's soft labels at T={temperature:g}",
                 highlight=False, markup=False)  # fmt: skip
    params = {"teacher": str(teacher), "temperature": temperature}
    _fit(o, _train_config(o, "distillation", params), dest)


@cli.command("train-codec")
@click.option("--data", default="mnist5k", show_default=True, help="Dataset name or .npz path.")
@click.option("--data-dir", default=None, help="Folder of standard datasets (else $ADVLAB_DATA).")
@click.option("--out", default=None, help="Output path (default: codec-<data>.safetensors).")
@click.option("--epochs", default=10, show_default=True)
@click.option("--latent-channels", default=1, show_default=True, help="Channels of the code.")
@click.option("--downsample", default=1, show_default=True,
              help="Stride-2 stages: 1 halves the image (28x28 -> 14x14), 2 quarters it.")  # fmt: skip
@click.option("--hidden", default=16, show_default=True, help="Hidden convolution channels.")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--n", "n", default=0, show_default=True, help="Training images (0 = all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: cpu).")
def train_codec_cmd(data: str, data_dir: str | None, out: str | None, epochs: int,
                    latent_channels: int, downsample: int, hidden: int, batch_size: int,
                    lr: float, n: int, seed: int, device: str | None) -> None:  # fmt: skip
    """Train AutoZOOM's convolutional autoencoder on unlabeled training images.

    The codec is saved like any model (safetensors and JSON metadata); pass it to the
    autozoom attack as codec=PATH (reduction 'ae'). Labels are not used.

    \b
    Examples:
      advlab train-codec --data mnist --out ae-mnist.safetensors --epochs 10
      advlab train-codec --data mnist5k --downsample 2 --latent-channels 4
    """
    from advlab.data import load_dataset
    from advlab.models.codec import save_codec, train_codec

    dest = _dest(out, f"codec-{Path(data).stem}.safetensors")
    splits = load_dataset(data, data_dir=data_dir)
    if splits.train is None:
        raise ConfigError(f"dataset {data!r} has no training split to train a codec on")
    x = splits.train.x if n <= 0 else splits.train.x[:n]

    def show(event: dict[str, Any]) -> None:
        console.print(f"epoch {event['epoch']}/{event['epochs']}: reconstruction MSE "
                      f"{event['loss']:.5f}", highlight=False, markup=False)  # fmt: skip

    recipe = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "n": len(x)}
    model, mse = train_codec(x, latent_channels=latent_channels, downsample=downsample,
                             hidden=hidden, epochs=epochs, batch_size=batch_size, lr=lr,
                             seed=seed, device=device or "cpu", progress=show)  # fmt: skip
    path = save_codec(model, dest, dataset=data, loss=mse, seed=seed, recipe=recipe)
    stdout.print(f"codec {tuple(model.in_shape)} -> {model.latent_shape}, reconstruction MSE "
                 f"{mse:.5f}; saved {path}", highlight=False, markup=False)  # fmt: skip


@cli.command("run")
@click.argument("file", required=False)
@click.option("--schema", "show_schema", is_flag=True,
              help="Print the experiment file's JSON Schema and exit.")  # fmt: skip
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override a key of the file, e.g. --set audit.n=10 (value read as YAML).")  # fmt: skip
@click.option("--check", is_flag=True, help="Check the file and print it resolved; run nothing.")
@click.option("--fresh", is_flag=True,
              help="Compute the audit again even if an identical one completed before.")  # fmt: skip
@_quiet
def run_cmd(file: str | None, show_schema: bool, sets: tuple[str, ...], check: bool, fresh: bool,
            quiet: bool) -> None:  # fmt: skip
    """Run an experiment file: its train, audit and certify sections, in that order.

    Unknown keys are errors naming the nearest valid key; `advlab run --schema` prints the
    file's JSON Schema (for editors). See docs/runs.md and examples/experiment.yaml.

    \b
    Examples:
      advlab run examples/experiment.yaml
      advlab run examples/experiment.yaml --set audit.n=20 --check
    """
    import yaml

    from advlab.experiment import load_experiment, run_experiment, schema
    from advlab.serialize import pretty_json

    if show_schema:
        click.echo(pretty_json(schema()))
        return
    if file is None:
        raise ConfigError("advlab run needs an experiment file (see examples/experiment.yaml), "
                          "or --schema")  # fmt: skip
    overrides: dict[str, Any] = {}
    for text in sets:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {text}: expected SECTION.KEY=VALUE, e.g. audit.n=10")
        try:
            overrides[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {text}: the value is not valid YAML") from None
    exp = load_experiment(file, overrides)
    if check:
        click.echo(pretty_json(exp.to_dict()))
        return
    with _Bar(quiet) as bar:
        res = run_experiment(exp, progress=bar, fresh=fresh)
    if res.train_meta is not None and exp.train is not None:
        how = "reused" if res.train_reused else "trained"
        acc = res.train_meta.get("clean_accuracy", float("nan"))
        stdout.print(f"train: {how} {exp.train.out} (test accuracy {acc:.2%})",
                     highlight=False, markup=False)  # fmt: skip
    if res.audit is not None and exp.audit is not None:
        print_audit(res.audit, exp.audit.model, exp.audit.data)
    if res.certify is not None and exp.certify is not None:
        c = exp.certify
        print_certify(res.certify, c.model, c.data, c.method, c.norm)


@cli.command("list")
@click.argument(
    "kind",
    type=click.Choice(["attacks", "models", "datasets", "recipes", "certifiers", "reproductions"]),
)
def list_cmd(kind: str) -> None:
    """List registered components with a one-line description each."""
    import advlab.reproduce  # noqa: F401  (registers the catalog)
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
        acc = (r.summary or {}).get("clean_accuracy")
        note = "" if acc is None else f"clean {acc:.2%}"
        if r.status == "failed" and r.error:
            note = escape(r.error.splitlines()[0][:60])
        table.add_row(r.id, r.kind, r.status, str(r.created)[:19], note)
    stdout.print(table)


@runs.command("show")
@click.argument("run_id")
@click.option("--store", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the full record as JSON.")
def runs_show(run_id: str, store: str | None, as_json: bool) -> None:
    """Show one run and its evaluations."""
    from advlab.compare import resolve_run_id
    from advlab.serialize import pretty_json

    st = _store(store)
    run_id = resolve_run_id(st, run_id)  # a unique prefix names the run
    r = st.get_run(run_id)
    rows = st.summaries(run_id)
    if as_json:
        stdout.print_json(pretty_json({**r.to_dict(), "rows": [s.to_dict() for s in rows]}))
        return
    stdout.print(f"run {r.id}  kind={r.kind}  status={r.status}  created={r.created}",
                 highlight=False, markup=False)  # fmt: skip
    if r.error:
        stdout.print(f"error: {r.error}", highlight=False, markup=False)
    stdout.print("config: " + json.dumps(r.config, default=str), highlight=False, markup=False)
    table = Table()
    for col in ("attack", "norm", "eps", "n", "robust acc", "95% CI", "success", "time"):
        table.add_column(col)
    for e in rows:
        table.add_row(
            escape(e.attack), e.norm, f"{e.eps:g}", str(e.n), f"{e.robust_accuracy:.2%}",
            f"[{e.ci_low:.2%}, {e.ci_high:.2%}]", _pct(e.success_rate), _seconds(e.wall_time),
        )  # fmt: skip
    stdout.print(table)
    cert = (r.summary or {}).get("certified") or []
    if cert:
        stdout.print(f"certified accuracy ({cert[0].get('method')}): " + ", ".join(
            f"{c.get('norm')} eps={c.get('eps'):g} {_pct(c.get('certified_accuracy'))}"
            for c in cert), highlight=False, markup=False)  # fmt: skip


@runs.command("compare")
@click.argument("run_a")
@click.argument("run_b")
@click.option("--store", default=None)
@click.option("--html", "html", default=None, metavar="PATH",
              help="Also write a self-contained HTML comparison to PATH.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON.")
@click.option("--allow-incomplete", is_flag=True,
              help="Compare runs that did not complete (their stored rows).")  # fmt: skip
def runs_compare(run_a: str, run_b: str, store: str | None, html: str | None, as_json: bool,
                 allow_incomplete: bool) -> None:  # fmt: skip
    """Compare run B with run A: robust accuracy per attack and eps side by side, B - A with a
    95% interval (Newcombe's paired interval when both runs evaluated the same samples, the
    independent one otherwise), and the samples that flipped. Ids may be unique prefixes."""
    from advlab.compare import compare_runs, write_compare_html
    from advlab.serialize import pretty_json

    cmp = compare_runs(_store(store), run_a, run_b, allow_incomplete=allow_incomplete)
    path = write_compare_html(html, cmp) if html else None
    if as_json:
        doc = cmp.to_dict()
        if path is not None:
            doc["html"] = str(path)
        click.echo(pretty_json(doc))
        return
    for w in cmp.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(w)}", highlight=False)
    _print_comparison(cmp)
    if path is not None:
        stdout.print(f"html: {path}", highlight=False, soft_wrap=True, markup=False)


def _print_comparison(cmp: Any) -> None:
    from advlab.compare import row_label, sentence
    from advlab.evaluate.plan import CLEAN, WORST_CASE

    for name, r in (("A", cmp.a), ("B", cmp.b)):
        n = len(r.clean) if r.clean is not None else "?"
        stdout.print(f"{name}: {r.info.id}  {r.info.config.get('model', '?')} on {r.dataset}, "
                     f"n={n}, {r.info.status}", highlight=False, markup=False)  # fmt: skip
    how = ("paired (same samples): Newcombe 1998 paired score interval" if cmp.paired else
           f"not paired ({cmp.unpaired_reason}): Newcombe 1998 independent score interval")  # fmt: skip
    table = Table(title=escape(f"robust accuracy, B - A with 95% interval; {how}"))
    for col in ("row", "eps", "A", "B", "B-A", "95% CI", "A>B", "B>A"):
        table.add_column(col, justify="left" if col == "row" else "right", no_wrap=True)
    for r in cmp.rows:
        label = row_label(r)
        acc = lambda s: "-" if s is None else f"{s['accuracy']:.1%}"  # noqa: E731
        if r.only is not None:
            diff, ci, broken, fixed = f"only in {r.only}", "-", "-", "-"
        else:
            diff = f"{100 * r.diff:+.1f}"
            ci = f"{100 * r.ci[0]:+.1f}..{100 * r.ci[1]:+.1f}"
            broken = str(r.broken_in_b["count"]) if r.broken_in_b else "-"
            fixed = str(r.fixed_in_b["count"]) if r.fixed_in_b else "-"
        table.add_row(escape(label), "-" if r.attack == CLEAN else f"{r.eps:g}",
                      acc(r.a), acc(r.b), diff, ci, broken, fixed)  # fmt: skip
    stdout.print(table)
    stdout.print("A>B: robust in A, broken in B; B>A: the reverse (points are percent).",
                 highlight=False, markup=False)  # fmt: skip
    for r in cmp.rows:
        if r.attack != WORST_CASE or not r.broken_in_b or not r.fixed_in_b:
            continue
        if r.broken_in_b["count"] or r.fixed_in_b["count"]:
            stdout.print(
                f"worst-case {r.norm} eps={r.eps:g}: broken in B {_flip_text(r.broken_in_b)}; "
                f"fixed in B {_flip_text(r.fixed_in_b)}", highlight=False, markup=False,
            )  # fmt: skip
    stdout.print(sentence(cmp), highlight=False, markup=False)


def _flip_text(f: dict[str, Any]) -> str:
    if not f["count"]:
        return "0"
    more = ", ..." if f["count"] > len(f["first"]) else ""
    return f"{f['count']} (indices {', '.join(map(str, f['first']))}{more})"


@runs.command("export")
@click.argument("run_id")
@click.option("--format", "fmt", type=click.Choice(["csv", "json", "parquet"]), default="csv",
              show_default=True)  # fmt: skip
@click.option("--out", default=None, metavar="PATH",
              help="Destination (default <run id>-records.<format>; - prints csv or json).")  # fmt: skip
@click.option("--rows", "derived", is_flag=True,
              help="Also export the reported rows derived from the cells (a minimal attack at "
              "each eps, the worst case).")  # fmt: skip
@click.option("--store", default=None)
def runs_export(run_id: str, fmt: str, out: str | None, derived: bool, store: str | None) -> None:
    """Export a run's per-sample records: one row per sample and cell (index, label, attack,
    norm, eps, success, robust, perturbation size, queries, predictions, target, certified
    radius, ...) and the run's metadata (configuration, provenance, summaries) in JSON: inside
    the file for json and parquet, beside it (<out>.meta.json) for csv."""
    from advlab.compare import export_run

    path, text, count = export_run(_store(store), run_id, fmt, out, derived=derived)
    if text is not None:
        click.echo(text, nl=False)
        return
    console.print(f"{count} records written to {path}", highlight=False, markup=False)


@cli.command("transfer-matrix")
@click.option("--families", default="dnn,lr,svm,tree,knn,ens", show_default=True,
              help="Model families: dnn, lr, svm, tree, knn, ens (majority vote of the others).")  # fmt: skip
@click.option("--data", default="mnist5k", show_default=True, help="Dataset name or .npz path.")
@click.option("--data-dir", default=None, help="Folder of standard datasets (else $ADVLAB_DATA).")
@click.option("-n", "--n", "n", default=200, show_default=True, help="Test images attacked.")
@click.option("--eps", default=0.3, show_default=True, help="FGSM L-inf radius.")
@click.option("--train-size", default=None, type=int, help="Training images used (default all).")
@click.option("--dnn-arch", default="papernot-mnist", show_default=True,
              help="Zoo architecture of the DNN (mlp for inputs under 16x16).")  # fmt: skip
@click.option("--dnn", "dnn_path", default=None, help="A saved model to use as the DNN.")
@click.option("--onnx", is_flag=True, help="Query the DNN target through ONNX Runtime.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--quick", is_flag=True,
              help="Small budgets: 1 DNN epoch, 2,000 training images, 3 substitute rounds.")  # fmt: skip
@click.option("--out", "out_dir", default="transfer-matrix", show_default=True,
              help="Folder for transfer-matrix.json, .png (heat map) and .html.")  # fmt: skip
@_quiet
def transfer_matrix_cmd(families: str, data: str, data_dir: str | None, n: int, eps: float,
                        train_size: int | None, dnn_arch: str, dnn_path: str | None, onnx: bool,
                        seed: int, device: str, quick: bool, out_dir: str,
                        quiet: bool) -> None:  # fmt: skip
    """Cross-family transferability: train models of several families on the same data, craft
    FGSM examples on each (white-box for DNN/LR/SVM, through a substitute trained on the labels
    of DT/kNN/ensemble), and print the rate at which each target misclassifies them (Papernot,
    McDaniel & Goodfellow 2016). See docs/transfer.md."""
    from advlab.transfer.matrix import NAMES, MatrixConfig, run_transfer_matrix

    quick_opts: dict[str, Any] = {"dnn_epochs": 1, "rounds": 3, "sub_epochs": 5}
    cfg = MatrixConfig(
        families=_names(families), data=data, data_dir=data_dir, n=n, eps=eps,
        train_size=train_size if train_size or not quick else 2000, dnn_arch=dnn_arch,
        dnn_path=dnn_path, onnx=onnx, seed=seed, device=device, **(quick_opts if quick else {}),
    )  # fmt: skip
    with _Bar(quiet) as bar:
        res = run_transfer_matrix(cfg, out_dir=Path(out_dir), progress=bar)
    table = Table(
        title=f"% misclassified by the target (FGSM eps={eps:g}, {escape(data)}, n={res.n})"
    )
    table.add_column("source \\ target")
    for f in res.families:
        table.add_column(NAMES[f], justify="right")
    for f, row in zip(res.families, res.matrix, strict=True):
        table.add_row(f"{NAMES[f]} ({res.method[f]})", *(f"{100 * v:.1f}" for v in row))
    table.add_row("clean error", *(f"{100 * res.clean_error[f]:.1f}" for f in res.families))
    stdout.print(table)
    for f, s in res.substitutes.items():
        stdout.print(f"substitute of {NAMES[f]}: {s['queries']} label queries, agreement "
                     f"{_pct(s['agreement'])}", highlight=False, markup=False)  # fmt: skip
    for kind, path in res.files.items():
        stdout.print(f"{kind}: {path}", highlight=False, soft_wrap=True, markup=False)


@cli.command("reproduce")
@click.argument("name")
@click.option("--quick", is_flag=True,
              help="mnist5k and small budgets (minutes on a CPU); targets check directions.")  # fmt: skip
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Change a parameter of the entry (repeatable); see `advlab reproduce NAME "
              "--params`.")  # fmt: skip
@click.option("-n", "--n", "n", type=int, default=None, help="Test images (same as --set n=N).")
@click.option("--params", "show_params", is_flag=True,
              help="Print the entry's parameters (full and --quick) and exit.")  # fmt: skip
@click.option("--out", "out_dir", default=None,
              help="Output folder (default advlab-out/reproduce/NAME[-quick]); trained models "
              "and finished stages kept there are reused.")  # fmt: skip
@click.option("--data-dir", default=None,
              help="Folder holding mnist/ (IDX) for the full runs (else $ADVLAB_DATA).")  # fmt: skip
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's).")
@click.option("--fresh", is_flag=True, help="Recompute stored evaluation stages.")
@_quiet
def reproduce_cmd(name: str, quick: bool, sets: tuple[str, ...], n: int | None,
                  show_params: bool, out_dir: str | None, data_dir: str | None, device: str,
                  threads: int | None, fresh: bool, quiet: bool) -> None:  # fmt: skip
    """Reproduce a published experiment: `advlab reproduce list` shows the catalog, `advlab
    reproduce NAME [--quick]` runs one entry and writes reproduction.html and .json (the paper's
    figures beside the measured ones, each marked against its target). Exits with status 1 when
    a target is missed. An interrupted run resumes with the same command."""
    import torch

    from advlab.registry import REPRODUCTIONS
    from advlab.reproduce import run_reproduction

    if name == "list":
        _print_catalog()
        return
    entry = REPRODUCTIONS.get(name)
    if show_params:
        stdout.print_json(json.dumps({"full": entry.resolve(quick=False),
                                      "quick": entry.resolve(quick=True)}))  # fmt: skip
        return
    overrides = _key_values(sets, "--set")
    if n is not None:
        overrides["n"] = n
    if threads:
        torch.set_num_threads(threads)
    from advlab.errors import DataError

    try:
        with _Bar(quiet) as bar:
            run = run_reproduction(name, quick=quick, overrides=overrides, out=out_dir,
                                   data_dir=data_dir, device=device, fresh=fresh,
                                   progress=bar)  # fmt: skip
    except DataError as e:
        if quick:
            raise
        raise DataError(f"{e} Or run `advlab reproduce {name} --quick` on the embedded "
                        "5,000 digits.") from None  # fmt: skip
    _print_reproduction(run)
    if run.passed is False:
        sys.exit(1)


def _print_catalog() -> None:
    from advlab.registry import REPRODUCTIONS

    table = Table(title="advlab reproduce NAME [--quick]")
    table.add_column("name")
    table.add_column("experiment")
    table.add_column("--quick", justify="right")
    for name in REPRODUCTIONS.names():
        e = REPRODUCTIONS.get(name)
        table.add_row(name, e.title, f"~{e.minutes:g} min")
    stdout.print(table)


def _print_reproduction(run: Any) -> None:
    from advlab.report.reproduction import MARKS, verdict
    from advlab.reproduce import format_value

    p = run.payload
    table = Table(title=f"{escape(p['title'])}{' (--quick)' if p['quick'] else ''}")
    for col, just in (("figure", "left"), ("paper", "right"), ("measured", "right"),
                      ("target", "right"), ("", "left")):  # fmt: skip
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for f in p["figures"]:
        mark = MARKS[f["passed"]]
        style = {True: "green", False: "bold red", None: "dim"}[f["passed"]]
        table.add_row(escape(f["label"]), escape(format_value(f["paper"], f["unit"])),
                      format_value(f["measured"], f["unit"]),
                      escape(f["target"]["text"]) if f["target"] else "",
                      f"[{style}]{mark}[/{style}]")  # fmt: skip
    stdout.print(table)
    for note in p["notes"]:
        stdout.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    stdout.print(verdict(p["passed"], p["figures"]) + f" ({p['seconds']:.0f} s)", markup=False)
    for kind, path in run.files.items():
        stdout.print(f"{kind}: {path}", highlight=False, soft_wrap=True, markup=False)


def main() -> None:
    cli(prog_name="advlab")


if __name__ == "__main__":
    main()
