"""Reports: a self-contained HTML page and a JSON file for each evaluation."""

from advlab.report.diagnostics import CHECKS, Diagnostic, diagnose
from advlab.report.fmt import fragment, image_data_uri, png_data_uri
from advlab.report.html import render_html, write_html_report
from advlab.report.json_report import json_report, write_json_report
from advlab.report.sections import (
    SECTIONS,
    Section,
    certified_section,
    checks_section,
    curve_section,
    examples_section,
    headline,
    norms_section,
    per_class_section,
    provenance_section,
    queries_section,
    render_transfer_matrix,
    summary_section,
    targeted_section,
    training_section,
    transfer_section,
    verdict_section,
)

__all__ = [
    "CHECKS",
    "SECTIONS",
    "Diagnostic",
    "Section",
    "certified_section",
    "checks_section",
    "curve_section",
    "diagnose",
    "examples_section",
    "fragment",
    "headline",
    "image_data_uri",
    "json_report",
    "norms_section",
    "per_class_section",
    "png_data_uri",
    "provenance_section",
    "queries_section",
    "render_html",
    "render_transfer_matrix",
    "summary_section",
    "targeted_section",
    "training_section",
    "transfer_section",
    "verdict_section",
    "write_html_report",
    "write_json_report",
]
