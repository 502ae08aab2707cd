"""Data set health before training: `scan` reads every file once into fingerprints,
`duplicates` groups exact and near copies, `checks` turns them into the `Report` (corrupt
files, duplicates, leaks, warnings), `report` writes report.html, `quarantine` moves flagged
files out and back; `audit` finds likely-mislabelled images with a model that never saw
them."""

from imgcls.doctor.checks import Report, diagnose
from imgcls.doctor.quarantine import paths_from_csv, quarantine, restore
from imgcls.doctor.report import write_html_report

__all__ = ["Report", "diagnose", "paths_from_csv", "quarantine", "restore", "write_html_report"]
