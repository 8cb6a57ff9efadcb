"""``clapkit benchmark``: the published evaluation protocols of LAION-CLAP, MS-CLAP, AudioCLIP
and CLAPSep on a model, reported beside the published figures.

>>> from clapkit.benchmark import run_benchmark, write_report
>>> report = run_benchmark("models/clap-630k", "data/", protocol_name="laion-clap", cache_dir="cache/")
>>> write_report(report, "reports/clap-630k")

See docs/EVALUATION.md for the protocols, the figures and their sources.
"""

from clapkit.benchmark.cache import EmbeddingCounts
from clapkit.benchmark.datasets import DATASETS
from clapkit.benchmark.protocols import PROTOCOLS, TASKS
from clapkit.benchmark.report import write_report
from clapkit.benchmark.runner import BenchmarkError, BenchmarkReport, DatasetReport, TaskResult, run_benchmark

__all__ = ["DATASETS", "PROTOCOLS", "TASKS", "BenchmarkError", "BenchmarkReport", "DatasetReport", "EmbeddingCounts",
           "TaskResult", "run_benchmark", "write_report"]
