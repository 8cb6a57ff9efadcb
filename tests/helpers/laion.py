"""The ``laion_clap`` 1.1.7 reference as an oracle: build it offline, save it officially, embed.

Nothing touches the network: ``wget`` (imported by the package but only used to download
weights) is stubbed, and ``RobertaModel.from_pretrained('roberta-base')`` inside the reference
is replaced by a randomly initialised RoBERTa built from a local config (:func:`write_roberta_dir`).
The reference's random choices at inference (``rand_trunc`` crop, fusion crops) are pinned to
clapkit's deterministic rules (centre crop, middle of each third) by patching ``numpy.random``
while the reference preprocesses, so both paths see identical inputs.
"""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import torch

CORPUS = [
    "a dog barks in the distance while rain falls",
    "a man speaks over music",
    "birds chirp and a car passes by",
    "the sound of a cat",
    "water is running from a tap",
    "someone is typing on a keyboard",
    "a siren wails as traffic goes by",
    "applause and cheering from a large crowd",
]

#: Tiny text tower: width must stay 768 because the reference hard-codes Linear(768, 512).
ROBERTA_SHAPES = {"hidden_size": 768, "num_hidden_layers": 1, "num_attention_heads": 12,
                  "intermediate_size": 256, "max_position_embeddings": 82, "type_vocab_size": 1}


@contextlib.contextmanager
def single_thread():
    """Run torch on one intra-op thread: on a shared 2-core CPU, OpenMP threads fighting
    other processes make small ops ~10x slower (measured: HTSAT test-preset forward 5.4 s with
    2 threads vs 0.8 s with 1 at load average 13)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def reference():
    """Import the reference modules offline; returns ``laion_clap.clap_module.model`` and ``training.data``."""
    sys.modules.setdefault("wget", types.ModuleType("wget"))
    import laion_clap.clap_module.model as model_module
    import laion_clap.training.data as data_module

    return model_module, data_module


def roberta_bpe(vocab_size: int = 400):
    """A RoBERTa-style byte-level BPE ``tokenizers.Tokenizer`` trained on :data:`CORPUS`.

    Built as a tokenizer object because transformers 5.x's ``RobertaTokenizerFast(vocab_file=,
    merges_file=)`` silently ignores both files (a 5-token tokenizer mapping every text to
    ``[<s>, </s>]``); the object carries the vocabulary, merges and RoBERTa's
    ``<s> ... </s>`` template into ``tokenizer.json``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    return tok


def write_roberta_dir(path: Path, with_config: bool = True, vocab_size: int = 400) -> Path:
    """A RoBERTa-compatible text-model directory: ``tokenizer.json`` (plus ``vocab.json`` and
    ``merges.txt``, as roberta-base carries) and config; the tokenizer is checked not to be degenerate."""
    from transformers import RobertaConfig, RobertaTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    bpe = roberta_bpe(vocab_size)
    bpe.model.save(str(path))
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                     cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    tokenizer.save_pretrained(path)
    assert (path / "tokenizer.json").is_file()
    assert_tokenizer_not_degenerate(roberta_tokenizer(path))
    if with_config:
        RobertaConfig(vocab_size=len(tokenizer), layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
                      eos_token_id=2, **ROBERTA_SHAPES).save_pretrained(path)
    return path


def assert_tokenizer_not_degenerate(tokenizer, texts: tuple[str, str] = (CORPUS[0], CORPUS[3])) -> None:
    """Guard for every shared text fixture: two different sentences get different ids, each more
    than the special tokens (a tokenizer that lost its vocabulary maps every text to ``[<s>, </s>]``)."""
    specials = set(tokenizer.all_special_ids)
    ids = [tokenizer(text)["input_ids"] for text in texts]
    assert ids[0] != ids[1], f"{type(tokenizer).__name__} maps {texts} to the same ids {ids[0]}"
    for text, seq in zip(texts, ids):
        assert len([i for i in seq if i not in specials]) >= 2, f"{text!r} -> {seq}: only special tokens"
    assert len(tokenizer) > 50, f"a {len(tokenizer)}-token vocabulary"


def roberta_tokenizer(text_dir: Path):
    from transformers import RobertaTokenizerFast

    return RobertaTokenizerFast.from_pretrained(str(text_dir))


def assert_embeddings_differ(embeddings: torch.Tensor, what: str, min_distance: float = 5e-4) -> None:
    """Guard for random-weight fixtures: embeddings of different inputs are not all the same vector
    (a collapsed model would make every parity comparison pass trivially). ``min_distance`` is
    five times the parity tests' 1e-4 tolerance: a mix-up of inputs cannot hide in the tolerance.
    (Random PANN-14 without calibrated BatchNorm statistics comes closest: 7.7e-4 between a 3 s
    and a 10 s clip.)"""
    embeddings = torch.nn.functional.normalize(embeddings.detach().float(), dim=-1)
    distance = torch.cdist(embeddings, embeddings)
    off = distance[~torch.eye(len(embeddings), dtype=torch.bool)]
    assert off.numel() and off.min() > min_distance, f"{what}: different inputs embed alike (min distance {off.min():.2e})"


def build_reference(amodel: str, fusion: bool, text_dir: Path, seed: int = 0, htsat_geometry: dict | None = None,
                    pann_divisor: int = 1, text_family: str = "roberta"):
    """A reference ``CLAP`` (eval mode) with random weights and non-trivial BatchNorm statistics.

    Args:
        amodel: ``HTSAT-tiny``, ``HTSAT-base`` or ``PANN-14`` (the package's model configs).
        fusion: ``aff_2d`` feature fusion.
        text_dir: a :func:`write_roberta_dir` directory (or a BERT one with ``text_family="bert"``);
            the text tower is built from its config.
        htsat_geometry: ``embed_dim``/``depths``/``num_heads``/``window_size`` of a smaller HTSAT,
            built with the reference's own ``HTSAT_Swin_Transformer`` class (same code path as
            the presets, for fast tests).
        pann_divisor: divide every PANN width by this; the reference's own ``ConvBlock`` class
            is instantiated narrower (same forward code, a fraction of the compute), and the
            head, projection and fusion layers it hard-codes are rebuilt at that width.
    """
    import json

    from transformers import AutoConfig, AutoModel

    model_module, _ = reference()
    from laion_clap.clap_module.factory import _MODEL_CONFIGS

    cfg = json.loads(json.dumps(_MODEL_CONFIGS[amodel]))
    config = AutoConfig.from_pretrained(str(text_dir))

    class OfflineText:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            return AutoModel.from_config(config)

    import laion_clap.clap_module.pann_model as pann_module
    from laion_clap.clap_module.htsat import HTSAT_Swin_Transformer

    def small_htsat(audio_cfg, enable_fusion=False, fusion_type="None"):
        return HTSAT_Swin_Transformer(
            spec_size=256, patch_size=4, patch_stride=(4, 4), num_classes=audio_cfg.class_num, config=audio_cfg,
            enable_fusion=enable_fusion, fusion_type=fusion_type, **htsat_geometry,
        )

    reference_init = pann_module.ConvBlock.__init__

    def narrow_init(self, in_channels, out_channels):
        reference_init(self, in_channels if in_channels == 1 else in_channels // pann_divisor,
                       out_channels // pann_divisor)

    text_class = {"roberta": "RobertaModel", "bert": "BertModel"}[text_family]
    patches = [mock.patch.object(model_module, text_class, OfflineText)]
    if htsat_geometry is not None:
        patches.append(mock.patch.object(model_module, "create_htsat_model", small_htsat))
    if pann_divisor > 1:
        patches.append(mock.patch.object(pann_module.ConvBlock, "__init__", narrow_init))
    torch.manual_seed(seed)
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        text_cfg = {**cfg["text_cfg"], "model_type": text_family}
        model = model_module.CLAP(cfg["embed_dim"], cfg["audio_cfg"], text_cfg, enable_fusion=fusion,
                                  fusion_type="aff_2d" if fusion else "None")
    if htsat_geometry is not None:
        _replace_audio_projection(model, model.audio_branch.num_features)
    if pann_divisor > 1:
        # The reference hard-codes the head and fusion widths; rebuild them at the narrow width.
        from laion_clap.clap_module.feature_fusion import AFF

        branch = model.audio_branch
        width, first = 2048 // pann_divisor, 64 // pann_divisor
        branch.fc1 = torch.nn.Linear(width, width)
        branch.fc_audioset = torch.nn.Linear(width, cfg["audio_cfg"]["class_num"])
        if fusion:
            branch.mel_conv2d = torch.nn.Sequential(
                torch.nn.Conv2d(1, first, kernel_size=(5, 5), stride=(6, 2), padding=(2, 2)),
                torch.nn.BatchNorm2d(first), torch.nn.ReLU(inplace=True),
            )
            branch.fusion_model = AFF(channels=first, type="2D")
        _replace_audio_projection(model, width)
    randomize_batchnorm(model, seed)
    with torch.no_grad():
        model.logit_scale_a.fill_(3.0)
    model.model_cfg = cfg
    return model.eval()


def _replace_audio_projection(model, width: int) -> None:
    joint = model.joint_embed_shape
    model.audio_projection = torch.nn.Sequential(torch.nn.Linear(width, joint), torch.nn.ReLU(),
                                                 torch.nn.Linear(joint, joint))


def randomize_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine weights on every BatchNorm (exposes key-map slips)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.running_mean.numel()
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)


def save_official(model, path: Path, module_prefix: bool = True, position_ids: bool = True) -> Path:
    """Save like the official files: ``{"epoch", "state_dict"}``, DDP ``module.`` prefix, ``position_ids``."""
    state = dict(model.state_dict())
    if position_ids:
        n = model.text_branch.embeddings.position_embeddings.weight.shape[0]
        state["text_branch.embeddings.position_ids"] = torch.arange(n).unsqueeze(0)
    if module_prefix:
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save({"epoch": 1, "name": "reference", "state_dict": state}, path)
    return Path(path)


@contextlib.contextmanager
def deterministic_reference_crops():
    """Pin the reference's random crops to clapkit's inference rules while it preprocesses."""

    def middle(choices):
        choices = list(choices)
        return choices[len(choices) // 2]

    def centre(low, high=None):
        return (high - 1) // 2 if high is not None else (low - 1) // 2

    with mock.patch("numpy.random.choice", middle), mock.patch("numpy.random.randint", centre):
        yield


def reference_audio_embeddings(model, waves: list[np.ndarray], fusion: bool) -> torch.Tensor:
    """``CLAP_Module.get_audio_embedding_from_data`` of the package, all clips in one batch."""
    _, data = reference()
    samples = []
    with deterministic_reference_crops(), torch.no_grad():
        for wave in waves:
            wave = data.int16_to_float32(data.float32_to_int16(wave.astype(np.float32)))
            samples.append(data.get_audio_features(
                {}, torch.from_numpy(wave).float(), 480000,
                data_truncating="fusion" if fusion else "rand_trunc", data_filling="repeatpad",
                audio_cfg=model.model_cfg["audio_cfg"],
            ))
        return model.get_audio_embedding(samples)


def reference_text_embeddings(model, tokenizer, texts: list[str]) -> torch.Tensor:
    tokens = dict(tokenizer(texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt"))
    if model.text_branch_type == "bert":
        # what a BERT tokenizer returns for single sentences; the reference's BERT path reads it
        tokens.setdefault("token_type_ids", torch.zeros_like(tokens["input_ids"]))
    with torch.no_grad():
        return model.get_text_embedding(tokens)


def test_waves(seconds=(3.0, 10.0, 25.0), rate: int = 48000, seed: int = 0) -> list[np.ndarray]:
    """Clips shorter than, equal to and longer than the 10 s window: tones + noise, amplitude < 1."""
    rng = np.random.default_rng(seed)
    waves = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * rate)) / rate
        tone = 0.3 * np.sin(2 * np.pi * (220 * (i + 1)) * t * (1 + 0.1 * np.sin(2 * np.pi * 0.3 * t)))
        waves.append((tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32))
    return waves
