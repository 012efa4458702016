"""Evaluation: robust accuracy under several attacks over a grid of threat models, as
plan -> run -> sink -> aggregate (see :mod:`advlab.evaluate.engine`)."""

from advlab.evaluate.aggregate import Evaluation, aggregate, summarize
from advlab.evaluate.engine import evaluate, summary
from advlab.evaluate.plan import (
    CLEAN,
    WORST_CASE,
    AttackConfig,
    EvalConfig,
    Plan,
    Row,
    attack_parameters,
    make_plan,
)
from advlab.evaluate.runner import run_batch
from advlab.evaluate.sinks import JsonlSink, MemorySink, ResultSink
from advlab.evaluate.stats import wilson_interval

__all__ = [
    "CLEAN",
    "WORST_CASE",
    "AttackConfig",
    "EvalConfig",
    "Evaluation",
    "JsonlSink",
    "MemorySink",
    "Plan",
    "ResultSink",
    "Row",
    "aggregate",
    "attack_parameters",
    "evaluate",
    "make_plan",
    "run_batch",
    "summarize",
    "summary",
    "wilson_interval",
]
