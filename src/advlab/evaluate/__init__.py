"""Evaluation: robust accuracy under several attacks over a grid of threat models, as
plan -> run -> sink -> aggregate (see :mod:`advlab.evaluate.engine`)."""

from advlab.evaluate.aggregate import Evaluation, aggregate, summarize
from advlab.evaluate.certification import (
    CertifiedSummary,
    SampleBounds,
    certified_accuracy,
    certified_radii,
)
from advlab.evaluate.engine import evaluate, summary
from advlab.evaluate.plan import (
    CERTIFIED,
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
    "CERTIFIED",
    "CLEAN",
    "WORST_CASE",
    "AttackConfig",
    "CertifiedSummary",
    "EvalConfig",
    "Evaluation",
    "JsonlSink",
    "MemorySink",
    "Plan",
    "ResultSink",
    "Row",
    "SampleBounds",
    "aggregate",
    "attack_parameters",
    "certified_accuracy",
    "certified_radii",
    "evaluate",
    "make_plan",
    "run_batch",
    "summarize",
    "summary",
    "wilson_interval",
]
