"""CLAP training-step and embedding throughput: clapkit against laion-clap, same process, same device.

Setting (the tower pair of LAION-CLAP's released checkpoints): HTSAT-tiny audio tower +
RoBERTa-base text tower (built from its config, random weights: nothing is downloaded), batch
64, 10 s clips at 48 kHz, 77-token texts, model step only (no data loading). For each library and precision:

- ``train samples/s``: forward of both towers + symmetric contrastive loss + backward +
  AdamW step (fused AdamW on CUDA and CPU for clapkit, as its task builds it; the reference's stock ``torch.optim.AdamW``);
- ``audio emb/s``: audio tower forward in eval mode under ``torch.inference_mode``;
- ``peak GB``: ``torch.cuda.max_memory_allocated`` over the timed training steps;
- ``MFU``: training FLOPs per sample (counted once with ``torch.utils.flop_counter`` on
  clapkit's eager step; the same model FLOPs are credited to the reference) x samples/s,
  over the GPU's peak for the precision (H100 SXM: 989 TFLOP/s bf16, 495 TF32).

``--interleave`` builds every contender first and alternates them step by step (after
``--warmup`` steps each), reporting the median step: on a shared or noisy machine (a VM's
idle 3-step runs differed by x1.5) that is the figure to quote; peak memory is not reported
then (every model is resident). Without it each contender runs its steps in one block.

Both libraries run in the same process on the same inputs; the reference is skipped when
``laion_clap`` is not installed or with ``--skip-reference``. ``--compile`` additionally
compiles clapkit's encoders (``clapkit.callbacks.TorchCompile``) and ``--channels-last``
converts its conv weights. Results print as a table and, with ``--json PATH``, as JSON.

``--captions``: ``fixed77`` gives both libraries 77-token texts (the reference's setting);
``realistic`` draws caption lengths like AudioCaps / Clotho captions (AudioCaps averages ~9
words, Clotho ~11; with RoBERTa's BPE and ``<s>``/``</s>`` that is ~12-16 tokens):
``round(N(14, 4^2))`` clipped to [6, 40] tokens, seeded. clapkit pads them to the batch's
longest caption (its text tower's ``padding="longest"``), the reference to 77 as its tokenizer
does (``padding="max_length"``), both with the attention mask of the real tokens.

examples:
  python benchmarks/train_step.py --device cuda --precision fp32 bf16           # the acceptance run
  python benchmarks/train_step.py --device cuda --precision bf16 --compile
  python benchmarks/train_step.py --device cpu --batch-size 4 --steps 7 --warmup 2 --interleave --captions realistic
  python benchmarks/train_step.py --device cpu --batch-size 2 --steps 1 --warmup 1   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RATE = 48000
TEXT_TOKENS = 77


@dataclass
class Result:
    library: str
    precision: str
    train_samples_per_s: float
    audio_embeddings_per_s: float
    peak_memory_gb: float | None
    train_step_ms: float
    mfu: float | None = None
    captions: str = "fixed77"
    step_ms_all: list[float] | None = None  # every timed step (--interleave)


# --------------------------------------------------------------------------- models
def roberta_base_config(layers: int):
    from transformers import RobertaConfig

    # roberta-base geometry (what both libraries load by name); random weights
    return RobertaConfig(vocab_size=50265, hidden_size=768, num_hidden_layers=layers, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                         layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)


def build_clapkit(htsat_variant: str, text_layers: int, clip_samples: int):
    from transformers import AutoModel

    from clapkit.encoders.hf_text import HFTextEncoder, tiny_tokenizer
    from clapkit.encoders.htsat import HTSAT
    from clapkit.encoders.projection import MLPProjection
    from clapkit.encoders.tower import Tower
    from clapkit.lightning_modules.contrastive import ContrastiveTask

    text = HFTextEncoder.from_parts(AutoModel.from_config(roberta_base_config(text_layers)), tiny_tokenizer(),
                                    pooling="pooler")
    towers = {
        "audio": Tower(HTSAT(htsat_variant, clip_samples=clip_samples), lambda d: MLPProjection(d, 512)),
        "text": Tower(text, lambda d: MLPProjection(d, 512)),
    }
    return ContrastiveTask(towers=towers, logit_scale_init=1 / 0.07)


def build_reference(htsat_variant: str, text_layers: int):
    """laion-clap's ``CLAP`` with HTSAT-tiny and a config-built RoBERTa; ``None`` when not installed."""
    sys.modules.setdefault("wget", types.ModuleType("wget"))  # imported by the package, used only to download
    try:
        import laion_clap.clap_module.model as model_module
        from laion_clap.clap_module.factory import _MODEL_CONFIGS
    except ImportError:
        return None
    from transformers import AutoModel

    config = roberta_base_config(text_layers)

    class OfflineRoberta:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return AutoModel.from_config(config)

    cfg = json.loads(json.dumps(_MODEL_CONFIGS["HTSAT-tiny" if htsat_variant == "test" else f"HTSAT-{htsat_variant}"]))
    patches = [mock.patch.object(model_module, "RobertaModel", OfflineRoberta)]
    if htsat_variant == "test":
        # The reference's own Swin class at clapkit's `test` geometry (smoke runs only).
        from laion_clap.clap_module.htsat import HTSAT_Swin_Transformer

        def small(audio_cfg, enable_fusion=False, fusion_type="None"):
            return HTSAT_Swin_Transformer(spec_size=256, patch_size=4, patch_stride=(4, 4),
                                          num_classes=audio_cfg.class_num, config=audio_cfg, embed_dim=16,
                                          depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=8)

        patches.append(mock.patch.object(model_module, "create_htsat_model", small))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        model = model_module.CLAP(cfg["embed_dim"], cfg["audio_cfg"], {**cfg["text_cfg"], "model_type": "roberta"},
                                  enable_fusion=False, fusion_type="None")
    if htsat_variant == "test":
        width, joint = model.audio_branch.num_features, model.joint_embed_shape
        model.audio_projection = torch.nn.Sequential(torch.nn.Linear(width, joint), torch.nn.ReLU(),
                                                     torch.nn.Linear(joint, joint))
    return model


def caption_lengths(batch: int, seed: int = 0) -> torch.Tensor:
    """Token counts (with ``<s>``/``</s>``) like AudioCaps / Clotho captions: round(N(14, 4^2)) in [6, 40]."""
    gen = torch.Generator().manual_seed(seed)
    return (14 + 4 * torch.randn(batch, generator=gen)).round().clamp(6, 40).long()


def caption_tokens(captions: str, batch: int, device: torch.device) -> tuple[dict, dict]:
    """``(clapkit tokens, reference tokens)``: the same token ids, padded to the batch's longest
    caption for clapkit and to 77 for the reference (fixed77: both 77 tokens, no padding)."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 50265, (batch, TEXT_TOKENS), generator=gen)
    lengths = torch.full((batch,), TEXT_TOKENS) if captions == "fixed77" else caption_lengths(batch)
    positions = torch.arange(TEXT_TOKENS)
    mask = (positions < lengths[:, None]).long()
    ids[:, 0] = 0
    ids[torch.arange(batch), lengths - 1] = 2
    ids = torch.where(mask.bool(), ids, torch.ones_like(ids))  # pad id 1
    longest = int(lengths.max())
    ours = {"input_ids": ids[:, :longest].to(device), "attention_mask": mask[:, :longest].to(device)}
    theirs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    return ours, theirs


# --------------------------------------------------------------------------- steps
def clip_loss(audio: torch.Tensor, text: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    logits = scale * audio.float() @ text.float().T
    target = torch.arange(audio.shape[0], device=audio.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class Runner:
    """One library's model with a training step and an audio-embedding step on fixed inputs."""

    def __init__(self, name: str, model, train_fn, embed_fn, optimizer):
        self.name, self.model, self.train_fn, self.embed_fn, self.optimizer = name, model, train_fn, embed_fn, optimizer

    def train_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.train_fn().backward()
        self.optimizer.step()


def clapkit_runner(model, audio, tokens, device, compile_: bool, channels_last: bool) -> Runner:
    from clapkit.callbacks.compile import ChannelsLast, TorchCompile

    if channels_last:
        ChannelsLast().apply(model)
    if compile_:
        TorchCompile(mode="max-autotune-no-cudagraphs").apply(model)
    fused = device.type in ("cuda", "cpu")  # as ContrastiveTask.configure_optimizers
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-4, fused=fused)
    batch = {"audio": audio, "text": tokens}

    def train():
        return model.compute_loss(batch, gather=False).loss

    def embed():
        return model.embed("audio", audio)

    return Runner("clapkit" + (" +compile" if compile_ else "") + (" +channels_last" if channels_last else ""),
                  model, train, embed, optimizer)


def reference_runner(model, audio, tokens) -> Runner:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    audio_dict = {"waveform": audio}

    def train():
        a, t, _, _, scale, _ = model(audio_dict, tokens, device=audio.device)
        return clip_loss(a, t, scale)

    def embed():
        return F.normalize(model(audio_dict, None, device=audio.device), dim=-1)

    return Runner("laion-clap 1.1.7", model, train, embed, optimizer)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call (mean over ``steps`` after ``warmup``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def count_training_flops(runner: Runner, device: torch.device, precision: str, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    runner.model.train()
    with counter, autocast(device, precision):
        runner.train_fn().backward()
    runner.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    return get_available_flops(device, torch.bfloat16 if precision == "bf16" else torch.float32)


def bench(runner: Runner, device: torch.device, precision: str, batch: int, warmup: int, steps: int,
          flops_per_sample: float | None, captions: str = "fixed77") -> Result:
    runner.model.to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    runner.model.train()
    with autocast(device, precision):
        step_s = measure(runner.train_step, device, warmup, steps)
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    runner.optimizer.zero_grad(set_to_none=True)
    runner.model.eval()
    with torch.inference_mode(), autocast(device, precision):
        embed_s = measure(runner.embed_fn, device, warmup, steps)
    samples = batch / step_s
    available = peak_flops(device, precision)
    mfu = flops_per_sample * samples / available if flops_per_sample and available else None
    return Result(runner.name, precision, samples, batch / embed_s, peak, 1000 * step_s, mfu, captions)


def bench_interleaved(runners: list[Runner], device: torch.device, precision: str, batch: int, warmup: int,
                      steps: int, flops_per_sample: float | None, captions: str) -> list[Result]:
    """Every runner's training step, then its embedding, alternated step by step; medians."""

    def timed(fn) -> float:
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - start

    def alternate(step_of) -> dict[int, list[float]]:
        for _ in range(warmup):
            for runner in runners:
                step_of(runner)()
        times: dict[int, list[float]] = {id(r): [] for r in runners}
        for _ in range(steps):
            for runner in runners:
                times[id(runner)].append(timed(step_of(runner)))
        return times

    for runner in runners:
        runner.model.to(device).train()
    with autocast(device, precision):
        train = alternate(lambda r: r.train_step)
    for runner in runners:
        runner.optimizer.zero_grad(set_to_none=True)
        runner.model.eval()
    with torch.inference_mode(), autocast(device, precision):
        embed = alternate(lambda r: r.embed_fn)
    available = peak_flops(device, precision)
    results = []
    for runner in runners:
        step_s, embed_s = statistics.median(train[id(runner)]), statistics.median(embed[id(runner)])
        samples = batch / step_s
        mfu = flops_per_sample * samples / available if flops_per_sample and available else None
        results.append(Result(runner.name, precision, samples, batch / embed_s, None, 1000 * step_s, mfu, captions,
                              [1000 * t for t in train[id(runner)]]))
    return results


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, cuDNN autotune)")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (10 s = 480000 samples)")
    parser.add_argument("--htsat", default="tiny", choices=["tiny", "base", "test"],
                        help="HTSAT preset (both libraries; test: a 16-wide smoke-test geometry)")
    parser.add_argument("--text-layers", type=int, default=12, help="RoBERTa layers (12 = roberta-base)")
    parser.add_argument("--skip-reference", action="store_true", help="measure clapkit only")
    parser.add_argument("--compile", action="store_true", help="also measure clapkit with torch.compile")
    parser.add_argument("--channels-last", action="store_true", help="clapkit conv weights in channels-last")
    parser.add_argument("--captions", nargs="+", choices=["fixed77", "realistic"], default=["fixed77"],
                        help="caption lengths (see the module docstring); each setting is measured")
    parser.add_argument("--interleave", action="store_true",
                        help="alternate the contenders step by step and report median steps (noisy machines)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both libraries get TF32 for fp32 matmuls
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    samples = int(round(args.seconds * RATE))
    audio = 0.1 * torch.randn(args.batch_size, samples, device=device)
    results: list[Result] = []
    for captions, precision in [(c, p) for c in args.captions for p in args.precision]:
        ours_tokens, reference_tokens = caption_tokens(captions, args.batch_size, device)
        variants = [(False, args.channels_last)] + ([(True, args.channels_last)] if args.compile else [])
        flops = None
        if args.interleave:
            runners = []
            for compile_, channels_last in variants:
                torch.manual_seed(0)
                model = build_clapkit(args.htsat, args.text_layers, samples).to(device)
                runners.append(clapkit_runner(model, audio, ours_tokens, device, compile_, channels_last))
            flops = count_training_flops(runners[0], device, precision, args.batch_size)
            torch.manual_seed(0)
            reference = None if args.skip_reference else build_reference(args.htsat, args.text_layers)
            if reference is not None:
                runners.append(reference_runner(reference.to(device), audio, reference_tokens))
            results += bench_interleaved(runners, device, precision, args.batch_size, args.warmup, args.steps, flops,
                                         captions)
            del runners, reference
            continue
        for compile_, channels_last in variants:
            torch.manual_seed(0)
            model = build_clapkit(args.htsat, args.text_layers, samples).to(device)
            runner = clapkit_runner(model, audio, ours_tokens, device, compile_, channels_last)
            if flops is None:
                flops = count_training_flops(runner, device, precision, args.batch_size)
            results.append(bench(runner, device, precision, args.batch_size, args.warmup, args.steps, flops, captions))
            del runner, model
        if not args.skip_reference:
            torch.manual_seed(0)
            reference = build_reference(args.htsat, args.text_layers)
            if reference is None:
                print("laion_clap is not installed: reference skipped", file=sys.stderr)
            else:
                runner = reference_runner(reference.to(device), audio, reference_tokens)
                results.append(bench(runner, device, precision, args.batch_size, args.warmup, args.steps, flops,
                                     captions))
                del runner, reference
        if device.type == "cuda":
            torch.cuda.empty_cache()

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    print(f"device={device_name} torch={torch.__version__} batch={args.batch_size} clip={args.seconds:g}s@{RATE}Hz "
          f"htsat-{args.htsat} roberta layers={args.text_layers} warmup={args.warmup} steps={args.steps}")
    print(f"{'library':<34}{'captions':>10}{'prec':>5}{'train/s':>10}{'step ms':>10}{'emb/s':>10}{'peak GB':>9}{'MFU':>8}")
    for r in results:
        peak = f"{r.peak_memory_gb:.2f}" if r.peak_memory_gb is not None else "-"
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        print(f"{r.library:<34}{r.captions:>10}{r.precision:>5}{r.train_samples_per_s:>10.1f}{r.train_step_ms:>10.1f}"
              f"{r.audio_embeddings_per_s:>10.1f}{peak:>9}{mfu:>8}")
    by = {(r.library, r.precision, r.captions): r for r in results}
    for captions, precision in [(c, p) for c in args.captions for p in args.precision]:
        ref = by.get(("laion-clap 1.1.7", precision, captions))
        ours = [r for r in results if r.precision == precision and r.captions == captions
                and r.library.startswith("clapkit")]
        if ref:
            for r in ours:
                mem = (f", peak memory x{r.peak_memory_gb / ref.peak_memory_gb:.2f}"
                       if r.peak_memory_gb and ref.peak_memory_gb else "")
                print(f"{precision} {captions}: {r.library} vs reference: training x{r.train_samples_per_s / ref.train_samples_per_s:.2f}, "
                      f"embedding x{r.audio_embeddings_per_s / ref.audio_embeddings_per_s:.2f}{mem}")
    if flops:
        print(f"training FLOPs per sample (counted): {flops / 1e9:.1f} GFLOP")
    if args.json:
        payload = {"device": device_name, "torch": torch.__version__, "args": vars(args),
                   "flops_per_sample": flops, "results": [asdict(r) for r in results]}
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    return results


if __name__ == "__main__":
    main()
