"""Evaluation: the protocols of docs/method.md section 6, reports, and single-video predictions/explanations.

- :mod:`stzsar.eval.meter` -- multi-view meter (view probabilities averaged per video), accuracies,
  confusion matrix, skipped videos;
- :mod:`stzsar.eval.engine` -- the loop: each video encoded once, scored against every class;
- :mod:`stzsar.eval.protocols` -- zero-shot, few-shot and supervised protocols;
- :mod:`stzsar.eval.bank_cache` -- class banks cached on disk;
- :mod:`stzsar.eval.distributed` -- sharded evaluation under ``torchrun``;
- :mod:`stzsar.eval.report` -- JSON, Markdown and plots, with the paper's numbers;
- :mod:`stzsar.eval.predict`, :mod:`stzsar.eval.explain` -- ``stzsar predict`` / ``stzsar explain``.
"""

from stzsar.eval.bank_cache import BankCache, class_bank
from stzsar.eval.engine import EvalSettings, evaluate
from stzsar.eval.meter import EvalResult, MultiViewMeter, SkippedVideo, summarize_splits
from stzsar.eval.protocols import EvalSplit, ProtocolRun, few_shot, supervised, zero_shot
from stzsar.eval.report import write_report

__all__ = [
    "BankCache", "class_bank", "EvalSettings", "evaluate", "EvalResult", "MultiViewMeter", "SkippedVideo",
    "summarize_splits", "EvalSplit", "ProtocolRun", "few_shot", "supervised", "zero_shot", "write_report",
]
