"""Cost of the reference builds the run-wide test fixtures (tests/helpers/references.py) share.

Median of ``--repeats`` builds in one process (imports paid once, excluded), wall and CPU time:
the laion-clap small HTSAT reference with its RoBERTa directory and official checkpoint, and
msclap's narrow 2023 reference. Needs the parity extra (laion-clap, msclap)::

    PYTHONPATH=src python benchmarks/reference_builds.py

``--count`` instead prints how many builds a pytest run makes: pass the pytest arguments after
it (``python benchmarks/reference_builds.py --count tests/compat``); it runs pytest with this
file as a plugin that wraps the builders.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

counts: collections.Counter[str] = collections.Counter()


def _wrap(module, name, label) -> None:
    original = getattr(module, name)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        counts[label(*args, **kwargs)] += 1
        return original(*args, **kwargs)

    setattr(module, name, wrapped)


def pytest_configure(config) -> None:  # plugin mode (--count)
    import helpers.laion as laion

    _wrap(laion, "build_reference", lambda amodel, fusion, *a, **k: (
        f"laion-clap {amodel} fusion={fusion} seed={k.get('seed', 0)}"
        f"{' small geometry' if k.get('htsat_geometry') else ''} pann_divisor={k.get('pann_divisor', 1)}"
        f" text={k.get('text_family', 'roberta')}"))
    _wrap(laion, "write_roberta_dir", lambda *a, **k: "laion.write_roberta_dir")
    try:
        import msclap.CLAPWrapper as wrapper_module
    except ImportError:
        return
    _wrap(wrapper_module.CLAPWrapper, "__init__",
          lambda self, model_fp=None, version="2023", **k: f"msclap CLAPWrapper {version}")


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.write_line("reference builds:")
    for label, n in sorted(counts.items()):
        terminalreporter.write_line(f"  {n} x {label}")


def _costs(repeats: int) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import laion
    from helpers import msclap as msclap_helper
    from helpers.references import SMALL_HTSAT

    laion.reference()
    import msclap.CLAPWrapper  # noqa: F401 - imported once, outside the timings

    def laion_small(tmp: Path) -> None:
        text_dir = laion.write_roberta_dir(tmp / "roberta")
        with laion.single_thread():
            model = laion.build_reference("HTSAT-tiny", False, text_dir, htsat_geometry=SMALL_HTSAT)
        laion.save_official(model, tmp / "model.pt")

    builds = {"laion-clap small HTSAT + RoBERTa dir + save_official": laion_small,
              "msclap 2023 narrow": lambda tmp: msclap_helper.build_reference("2023", tmp)}
    for name, build in builds.items():
        times = []
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                wall, cpu = time.perf_counter(), time.process_time()
                build(Path(tmp))
                times.append((time.perf_counter() - wall, time.process_time() - cpu))
        print(f"{name}: wall median {statistics.median(w for w, _ in times):.2f} s, "
              f"CPU median {statistics.median(c for _, c in times):.2f} s over {repeats}")
    print("load average", " ".join(open("/proc/loadavg").read().split()[:3]))


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--count":
        import pytest

        sys.path.insert(0, str(Path(__file__).parent))
        return pytest.main(["-q", "-p", "reference_builds", *sys.argv[2:]])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    _costs(parser.parse_args().repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
