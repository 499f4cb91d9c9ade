"""The self-contained HTML report of a prediction folder or a run (`ldseg report`)."""

from ldseg.reporting.report import REPORT_FILE, build_report

__all__ = ["REPORT_FILE", "build_report"]
