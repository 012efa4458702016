"""Reports: a self-contained HTML page and a JSON file for each evaluation."""

from advlab.report.html import (
    SECTIONS,
    Section,
    certified_section,
    curve_section,
    examples_section,
    fragment,
    header_section,
    png_data_uri,
    render_html,
    summary_section,
    write_html_report,
)
from advlab.report.json_report import json_report, write_json_report

__all__ = [
    "SECTIONS",
    "Section",
    "certified_section",
    "curve_section",
    "examples_section",
    "fragment",
    "header_section",
    "json_report",
    "png_data_uri",
    "render_html",
    "summary_section",
    "write_html_report",
    "write_json_report",
]
