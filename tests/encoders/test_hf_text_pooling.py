"""HFTextEncoder pooling paths the official checkpoints need: LAION's BART (encoder output, mean over
every position) and MS-CLAP 2023's GPT-2 (suffix, "!" padding, non-pad-count position)."""

from __future__ import annotations

import torch
from transformers import AutoModel, BartConfig, GPT2Config

from clapkit.encoders.hf_text import HFTextEncoder
from helpers.models import byte_level_gpt2_tokenizer, write_gpt2_dir


def test_bart_mean_all_pools_the_encoder_over_every_position():
    tokenizer = byte_level_gpt2_tokenizer()
    tokenizer.pad_token = "<|endoftext|>"
    config = BartConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    bart = AutoModel.from_config(config).eval()
    encoder = HFTextEncoder.from_parts(bart, tokenizer, pooling="mean_all", max_length=20, padding="max_length")
    texts = ["a dog", "rain on a tin roof"]
    tokens = encoder.tokenize(texts)
    with torch.no_grad():
        # LAION-CLAP: torch.mean(text_branch(...)["encoder_last_hidden_state"], axis=1)
        expected = bart(**tokens)["encoder_last_hidden_state"].mean(dim=1)
        got = encoder(texts).embedding
    torch.testing.assert_close(got, expected)


def test_gpt2_msclap_rules(tmp_path):
    text_dir = write_gpt2_dir(tmp_path / "gpt2")
    kwargs = dict(load_weights=False, text_suffix=" <|endoftext|>", pad_token="!", max_length=77)
    torch.manual_seed(0)
    count = HFTextEncoder(str(text_dir), pooling="eot_count", **kwargs).eval()
    last = HFTextEncoder(str(text_dir), pooling="eot", **kwargs).eval()
    last.load_state_dict(count.state_dict())
    texts = ["a dog barks", "wow!"]
    tokens = count.tokenize(texts)
    assert count.tokenizer.pad_token_id == 0  # "!" is id 0, as in GPT-2's vocabulary
    assert tokens["input_ids"][0, int(tokens["attention_mask"][0].sum()) - 1] == 256  # ends in <|endoftext|>
    with torch.no_grad():
        a, b = count(texts).embedding, last(texts).embedding
        hidden = count.model(**tokens).last_hidden_state
    torch.testing.assert_close(a[0], b[0])  # same position without "!" in the text
    index = int((tokens["input_ids"][1] != 0).sum()) - 1  # msclap: ne(ids, 0).sum(-1) - 1
    torch.testing.assert_close(a[1], hidden[1, index])
    assert not torch.allclose(a[1], b[1])
    assert GPT2Config.from_pretrained(text_dir).n_embd == count.output_dim
