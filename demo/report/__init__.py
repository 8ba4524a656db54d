"""The report: the ratings database summed up like the paper's Figure 7, plus verdicts, agreement and exports.

Pure computation over a read-only SQLite connection, so it can run beside a live arena. The parts:

- ``reading``: the database, read once (``connect``, ``ReportError``), and which conversations ran different
  decoding on their two sides (another temperature, top-p, penalty or token cap, a penalty over another scope, or
  a server that may have ignored a setting): their verdicts compare more than the models.
- ``counting``: which rating counts (``build_report``): each turn once, the owner's latest rated attempt, as rated
  before the verdict showed the names; blind, unblinded and automatic conversations apart.
- ``stats``: shares, 95 % bootstrap intervals over *conversations* (scipy), the sign test, Fleiss' and Cohen's kappa.
- ``judges``: model judges (raters ``judge:<model>``): their two-order verdicts and their agreement with people.
- ``studies``: the prompt studies (Figures 1 and 3, safety) from ``demo.studies.records`` (``studies_section``),
  with ``preference``'s length-controlled preference and Bradley–Terry ranking.
- ``markdown``, ``figures`` (registered once, ``FIGURES``), ``export``: what a reader gets.

``python -m demo.report --db ratings.db [--json] [--out DIR] [--a-model NAME]`` prints the summary;
``python -m demo.report export --db ratings.db --format jsonl|csv|hf --out PATH`` writes every rating with its turn.
"""

from demo.report.counting import build_report
from demo.report.export import EXPORT_FIELDS, EXPORT_FORMATS, export, export_rows, study_rows
from demo.report.figures import FIGURES, ReportFigure, figure7, write_figures
from demo.report.judges import swap_verdict
from demo.report.markdown import markdown
from demo.report.paper import PAPER
from demo.report.reading import ReportError, connect
from demo.report.stats import cohen_kappa, fleiss_kappa, sign_test
from demo.report.studies import studies_section

figure = figure7  # the report's first figure, by the name callers have always used

__all__ = [
    "EXPORT_FIELDS", "EXPORT_FORMATS", "FIGURES", "PAPER", "ReportError", "ReportFigure", "build_report",
    "cohen_kappa", "connect", "export", "export_rows", "figure", "figure7", "fleiss_kappa", "markdown", "sign_test",
    "studies_section", "study_rows", "swap_verdict", "write_figures",
]  # fmt: skip
