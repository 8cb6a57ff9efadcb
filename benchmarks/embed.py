"""Audio embedding as a user feels it: clapkit against laion-clap 1.1.7, same weights, same run.

Setup (in ``--root``, reused when present): a LAION-CLAP HTSAT-tiny + RoBERTa-base model with
random weights (RoBERTa built from its config: nothing is downloaded), saved as an official
checkpoint and converted with ``clapkit convert laion-clap``; ``--files`` ten-second stereo
44.1 kHz FLAC files (tones + noise).

Measurements, each contender in turn within every repeat (interleaved), medians reported:

- ``model``: model-only audio embedding of one ``[batch, 480000]`` batch: clapkit's default
  CPU precision (``auto``) and fp32 against the reference's ``get_audio_embedding`` (fp32);
- ``e2e``: the whole ``clapkit embed MODEL FOLDER -o out.parquet`` command in a fresh process
  (imports included) against the reference's model load (``CLAP_Module`` + ``load_ckpt``) +
  ``get_audio_embedding_from_filelist`` of the same files (its imports excluded, as the
  acceptance asks), also in a fresh process;
- ``first``: time to the first embedding with warm imports: ``clapkit.load`` + embedding one
  file, in this process.

examples:
  python benchmarks/embed.py --root /tmp/embed_bench --repeats 3 --json outputs/bench/embed_cpu.json
  python benchmarks/embed.py --root /tmp/embed_smoke --files 2 --batch-size 1 --repeats 1 --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the offline reference builders (helpers.laion)


def roberta_base_dir(path: Path, layers: int) -> Path:
    """Tokenizer (small byte-level BPE) + roberta-base geometry config (``layers`` layers)."""
    from transformers import RobertaConfig

    from helpers.laion import write_roberta_dir

    if (path / "config.json").is_file():
        return path
    write_roberta_dir(path, with_config=False)
    RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5,
                  pad_token_id=1, bos_token_id=0, eos_token_id=2).save_pretrained(path)
    return path


def offline_reference_patches(text_dir: Path):
    """Patches under which laion_clap builds offline: a config-built RoBERTa and a local tokenizer.

    ``laion_clap.hook`` imports the package's modules a second time under the top-level name
    ``clap_module``, so the classes are patched where both copies find them: on transformers."""
    from transformers import AutoConfig, AutoModel, RobertaModel, RobertaTokenizer, RobertaTokenizerFast

    from helpers.laion import reference

    reference()
    config = AutoConfig.from_pretrained(str(text_dir))
    model = classmethod(lambda cls, *args, **kwargs: AutoModel.from_config(config))
    load_tokenizer = RobertaTokenizerFast.from_pretrained  # bound before patching (one class in transformers 5)
    tokenizer = classmethod(lambda cls, *args, **kwargs: load_tokenizer(str(text_dir)))
    return [mock.patch.object(RobertaModel, "from_pretrained", model),
            mock.patch.object(RobertaTokenizer, "from_pretrained", tokenizer)]


def converted_htsat_tiny(root: Path, layers: int) -> tuple[Path, Path, Path]:
    """A random-weight LAION-CLAP HTSAT-tiny checkpoint in the official layout under ``root`` and
    its ``clapkit convert`` model directory (both reused when present): ``(text_dir, ckpt, model_dir)``."""
    from clapkit.cli import main as clapkit_main
    from helpers.laion import build_reference, save_official

    root.mkdir(parents=True, exist_ok=True)
    text_dir = roberta_base_dir(root / "roberta", layers)
    ckpt = root / "laion_htsat_tiny.pt"
    if not ckpt.is_file():
        save_official(build_reference("HTSAT-tiny", False, text_dir), ckpt)
    model_dir = root / "clapkit_model"
    if not (model_dir / "config.yaml").is_file():
        assert clapkit_main(["convert", "laion-clap", str(ckpt), "--text-model", str(text_dir), "-o", str(model_dir),
                             "--overwrite", "-q"]) == 0
    return text_dir, ckpt, model_dir


def setup(root: Path, files: int, layers: int) -> tuple[Path, Path, Path, list[Path]]:
    """``(text_dir, official checkpoint, clapkit model dir, FLAC files)``, created once."""
    import soundfile as sf

    text_dir, ckpt, model_dir = converted_htsat_tiny(root, layers)
    folder = root / f"flac{files}"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(files):
        path = folder / f"clip{i:03d}.flac"
        if not path.is_file():
            t = np.arange(441000) / 44100
            left = 0.3 * np.sin(2 * np.pi * (200 + 37 * i) * t) + 0.05 * rng.standard_normal(t.size)
            right = 0.3 * np.sin(2 * np.pi * (300 + 53 * i) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(path, np.stack([left, right], 1).astype(np.float32), 44100, subtype="PCM_16")
        paths.append(path)
    return text_dir, ckpt, model_dir, paths


def build_reference_module(text_dir: Path, ckpt: Path):
    sys.modules.setdefault("wget", types.ModuleType("wget"))
    with ExitStack() as stack:
        for patch in offline_reference_patches(text_dir):
            stack.enter_context(patch)
        import laion_clap

        module = laion_clap.CLAP_Module(enable_fusion=False, amodel="HTSAT-tiny", device="cpu")
        module.load_ckpt(str(ckpt), verbose=False)
    return module


def reference_worker(text_dir: str, ckpt: str, files: list[str]) -> None:
    """In a fresh process: import laion_clap (untimed), then time load + embed of ``files``."""
    sys.modules.setdefault("wget", types.ModuleType("wget"))
    import laion_clap  # noqa: F401  imports are not part of the reference's figure

    start = time.perf_counter()
    module = build_reference_module(Path(text_dir), Path(ckpt))
    loaded = time.perf_counter()
    with torch.no_grad():
        out = module.get_audio_embedding_from_filelist(files)
    done = time.perf_counter()
    print(json.dumps({"load_s": loaded - start, "embed_s": done - loaded, "total_s": done - start,
                      "shape": list(out.shape)}))


def run_reference(text_dir: Path, ckpt: Path, files: list[Path]) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import embed; "
            f"embed.reference_worker({str(text_dir)!r}, {str(ckpt)!r}, {[str(f) for f in files]!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")])})
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_clapkit_command(model_dir: Path, folder: Path, out: Path, extra: list[str]) -> float:
    out.unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clapkit", "embed", str(model_dir), str(folder), "-o", str(out), "-q",
                    "--device", "cpu", *extra], check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/clapkit_embed_bench")
    parser.add_argument("--files", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8, help="model-only batch (clips)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text-layers", type=int, default=12)
    parser.add_argument("--skip", nargs="*", default=[], choices=["model", "e2e", "first"])
    parser.add_argument("--smoke", action="store_true", help="tiny text tower, for the CPU dry run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    layers = 1 if args.smoke else args.text_layers
    text_dir, ckpt, model_dir, files = setup(Path(args.root), args.files, layers)
    import clapkit

    results: dict = {"cpu_threads": torch.get_num_threads(), "files": args.files, "repeats": args.repeats,
                     "load_average_before": os.getloadavg()[0]}
    if "model" not in args.skip:
        rng = np.random.default_rng(0)
        wave = torch.from_numpy((0.1 * rng.standard_normal((args.batch_size, 480000))).astype(np.float32))
        fast = clapkit.load(model_dir, precision="auto")
        exact = clapkit.load(model_dir, precision="32")
        reference = build_reference_module(text_dir, ckpt).model.eval()

        def ours(model):
            return lambda: model._embed(model.audio_tower, wave)

        def theirs():
            with torch.no_grad():
                return reference.get_audio_embedding([{"waveform": w} for w in wave])

        contenders = {f"clapkit {fast.precision}": ours(fast), "clapkit 32": ours(exact), "laion-clap fp32": theirs}
        outputs = {name: fn() for name, fn in contenders.items()}  # warm-up, and the agreement check
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeats):
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        ref = torch.nn.functional.normalize(torch.as_tensor(outputs["laion-clap fp32"]).float(), dim=-1)
        results["model"] = {
            name: {"median_s": statistics.median(t), "clips_per_s": args.batch_size / statistics.median(t),
                   "all_s": t, "min_cosine_vs_reference": float(torch.nn.functional.cosine_similarity(
                       outputs[name].float(), ref).min())}
            for name, t in times.items()}
        del fast, exact, reference
    if "e2e" not in args.skip:
        out = Path(args.root) / "bench.parquet"
        runs: dict[str, list[float]] = {"clapkit embed (whole command)": [], "laion-clap load + filelist": []}
        detail = []
        for _ in range(args.repeats):
            runs["clapkit embed (whole command)"].append(run_clapkit_command(model_dir, files[0].parent, out, []))
            reference_run = run_reference(text_dir, ckpt, files)
            detail.append(reference_run)
            runs["laion-clap load + filelist"].append(reference_run["total_s"])
        results["e2e"] = {name: {"median_s": statistics.median(t), "files_per_s": args.files / statistics.median(t),
                                 "all_s": t} for name, t in runs.items()}
        results["e2e"]["reference_detail"] = detail
    if "first" not in args.skip:
        firsts = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model = clapkit.load(model_dir, precision="auto")
            model.embed_audio(str(files[0]))
            firsts.append(time.perf_counter() - start)
            del model
        results["first"] = {"median_s": statistics.median(firsts), "all_s": firsts}
    results["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    if args.json:
        from clapkit.utils.atomic import write_text

        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
