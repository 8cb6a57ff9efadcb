"""Untrusted model directories: exact identity and contradictions refused at load.

Each test reproduces the attack on a tiny random model: two models that only differ in the
middle of their weights, a file replaced after its embedding part finished, an ``inference:``
section or front end that contradicts the encoder or the saved filterbank, a tokenizer larger
than the text tower's embedding matrix, a query of unknown symbols, labels that differ only in
case.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import clapkit
from clapkit.audio import save_audio
from clapkit.cli import main
from clapkit.commands._shared import model_metadata, read_embeddings, write_embeddings
from clapkit.inference.clap import UnknownTokensWarning
from clapkit.inference.embedding import embed_corpus
from clapkit.inference.load import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    InferenceConfig,
    PretrainedError,
    instantiate_model,
    load_native,
    load_weights_into,
    save_pretrained,
)
from clapkit.io.identity import HASH_KEY, file_sha256, files_fingerprint
from helpers.models import (
    randomize_norm_stats,
    save_tiny_native,
    tiny_clap_config,
    tiny_fusion_clap_config,
    tone,
    write_bert_dir,
    write_wav_folder,
)

SR = 16000
MIB = 1 << 20


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _edit_config(directory: Path, edit) -> None:
    path = directory / CONFIG_NAME
    document = yaml.safe_load(path.read_text())
    edit(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def _tensor_spans(weights: Path) -> dict[str, tuple[int, int]]:
    """Absolute byte ranges of each tensor's data in a safetensors file (its JSON header)."""
    with open(weights, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    start = 8 + length
    return {name: (start + info["data_offsets"][0], start + info["data_offsets"][1])
            for name, info in header.items() if name != "__metadata__"}


# --------------------------------------------------------------------------- identity


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Models A and B (2.4 MB of weights each): same size, same first and last MiB of weights,
    one tensor in the middle of the file perturbed."""
    root = tmp_path_factory.mktemp("twins")
    config = tiny_clap_config(sample_rate=SR, embed_dim=512)
    inference = InferenceConfig(sample_rate=SR, clip_samples=SR)
    torch.manual_seed(0)
    task = instantiate_model(config)
    randomize_norm_stats(task)
    a = save_pretrained(task, root / "a", inference, config)
    size = (a / WEIGHTS_NAME).stat().st_size
    spans = _tensor_spans(a / WEIGHTS_NAME)
    middle = [name for name, (lo, hi) in spans.items() if lo >= MIB and hi <= size - MIB and hi - lo >= 4096]
    assert middle, f"no tensor lies between the first and last MiB of a {size}-byte file"
    # B is A with that tensor's bytes replaced (safetensors orders its header metadata at random,
    # so a second save would differ in the first bytes too), its hash recorded as a save would.
    lo, hi = spans[middle[0]]
    data = bytearray((a / WEIGHTS_NAME).read_bytes())
    data[lo:hi] = torch.randn((hi - lo) // 4, generator=torch.Generator().manual_seed(1)).numpy().tobytes()
    b = shutil.copytree(a, root / "b")
    (b / WEIGHTS_NAME).write_bytes(bytes(data))
    _edit_config(b, lambda d: d.update({HASH_KEY: file_sha256(b / WEIGHTS_NAME)}))
    clips = write_wav_folder(root / "clips", count=3)
    index = root / "a.parquet"  # what `clapkit embed --model A` writes, without the command's start-up
    model = clapkit.load(a, towers=("audio",))
    write_embeddings(index, [str(c) for c in clips], model.embed_audio(clips).numpy(), model_metadata(model, a))
    return a, b, clips, index


def test_models_equal_in_size_and_first_last_mib_get_different_fingerprints(twins):
    a, b, clips, _ = twins
    wa, wb = a / WEIGHTS_NAME, b / WEIGHTS_NAME
    data_a, data_b = wa.read_bytes(), wb.read_bytes()
    assert len(data_a) == len(data_b) > 2 * MIB
    assert data_a[:MIB] == data_b[:MIB] and data_a[-MIB:] == data_b[-MIB:] and data_a != data_b
    model_a, model_b = clapkit.load(a), clapkit.load(b)
    assert model_a.fingerprint.startswith("sha256:") and model_a.fingerprint != model_b.fingerprint
    assert files_fingerprint(wa) != files_fingerprint(wb)
    # The weights really differ where it matters (the perturbed tensor is the text tower's).
    texts = ["a dog barks", "rain on a window"]
    assert not torch.allclose(model_a.embed_text(texts), model_b.embed_text(texts), atol=1e-3)
    # The hash is recorded at save and is the file's sha256.
    assert yaml.safe_load((a / CONFIG_NAME).read_text())[HASH_KEY] == file_sha256(wa)


def test_retrieve_refuses_an_index_of_a_model_differing_only_in_the_middle(twins, capsys):
    a, b, _, index = twins
    assert main(["retrieve", "--model", str(a), "--index", str(index), "--query", "a dog", "-q"]) == 0
    capsys.readouterr()
    assert main(["retrieve", "--model", str(b), "--index", str(index), "--query", "a dog", "-q"]) == 2
    line = _one_error_line(capsys)
    assert "a.parquet: was embedded with a different model" in line


def test_retrieve_refuses_an_index_with_an_older_sampled_fingerprint(twins, tmp_path, capsys):
    a, _, _, _ = twins
    index = tmp_path / "old.npy"
    assert main(["embed", "--model", str(a), str(twins[2][0]), "-o", str(index), "-q"]) == 0
    meta = index.with_name("old.meta.json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "fingerprint": "0123456789abcdef"}))
    assert main(["retrieve", "--model", str(a), "--index", str(index), "--query", "a dog", "-q"]) == 2
    assert "older clapkit" in _one_error_line(capsys)


def test_weights_changed_after_saving_are_refused_and_older_directories_load(twins, tmp_path, capsys):
    a, b, _, _ = twins
    swapped = shutil.copytree(a, tmp_path / "swapped")
    shutil.copy(b / WEIGHTS_NAME, swapped / WEIGHTS_NAME)  # B's weights under A's config: same size
    with pytest.raises(PretrainedError, match=r"model.safetensors: content hash sha256 .* differs from .* recorded "
                                              r"in config.yaml"):
        clapkit.load(swapped)
    assert main(["embed", "--model", str(swapped), str(twins[2][0]), "-o", str(tmp_path / "e.npy"), "-q"]) == 2
    assert "model.safetensors: content hash" in _one_error_line(capsys)
    task, _, _ = load_native(a)
    with pytest.raises(PretrainedError, match="content hash"):  # the trainer's --weights DIR path
        load_weights_into(task, swapped)
    # A directory saved before the hash was recorded: hashed on load, not refused.
    legacy = shutil.copytree(a, tmp_path / "legacy")
    _edit_config(legacy, lambda d: d.pop(HASH_KEY))
    model = clapkit.load(legacy)
    assert model.fingerprint.startswith("sha256:") and model.fingerprint != clapkit.load(a).fingerprint
    _edit_config(legacy, lambda d: d.update({HASH_KEY: "not a digest"}))
    with pytest.raises(PretrainedError, match="weights_sha256 is not a sha256 hex digest"):
        clapkit.load(legacy)


def test_embed_resume_re_embeds_a_file_replaced_after_its_part_finished(tmp_path):
    model_dir = save_tiny_native(tmp_path / "model")
    files = [save_audio(tmp_path / "clips" / f"c{i}.wav", tone(1.0, SR, 300.0 * (i + 1), i), SR) for i in range(4)]
    names = [str(f) for f in files]
    out = tmp_path / "e.parquet"
    model = clapkit.load(model_dir, towers=("audio",))
    first = embed_corpus(model, names, out, part_size=2, workers=1)
    assert first.parts_written == 2
    before = os.stat(files[3])
    # Other audio under the same name and size; its modification time is set one second later so
    # that a file system with coarse timestamps cannot give the rewrite the old one.
    save_audio(files[3], tone(1.0, SR, 3000.0, 9), SR)
    os.utime(files[3], ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert os.stat(files[3]).st_size == before.st_size
    again = embed_corpus(model, names, out, part_size=2, workers=1)
    assert again.parts_written == 1 and again.parts_skipped == 1  # only the changed file's part
    fresh = model.embed_audio(files).numpy()
    np.testing.assert_allclose(again.embeddings, fresh, atol=1e-5, rtol=0)
    assert not np.allclose(again.embeddings[3], first.embeddings[3], atol=1e-3)
    np.testing.assert_array_equal(again.embeddings[:2], first.embeddings[:2])
    assert len(list(again.store.directory.glob("*.parquet"))) == 2  # the stale part was replaced
    # The command resumes the same parts and writes the new audio's embedding.
    save_audio(files[0], tone(1.0, SR, 5000.0, 7), SR)
    os.utime(files[0], ns=(before.st_atime_ns, os.stat(files[0]).st_mtime_ns + 2_000_000_000))
    assert main(["embed", "--model", str(model_dir), *names, "-o", str(out), "-q", "--part-size", "2"]) == 0
    paths, got, _ = read_embeddings(out)
    assert paths == names
    np.testing.assert_allclose(got, model.embed_audio(files).numpy(), atol=1e-5, rtol=0)
    assert not out.with_name(out.name + ".parts").exists()


# --------------------------------------------------------------------------- contradictions


@pytest.fixture(scope="module")
def plain_and_fused(tmp_path_factory):
    root = tmp_path_factory.mktemp("contradictions")
    plain = save_tiny_native(root / "plain")
    config = tiny_fusion_clap_config(sample_rate=SR)
    torch.manual_seed(0)
    fused = save_pretrained(instantiate_model(config), root / "fused",
                            InferenceConfig(sample_rate=SR, clip_samples=SR, fusion=True), config)
    return plain, fused


def _frontend(document) -> dict:
    encoder = document["model"]["init_args"]["towers"]["audio"]["init_args"]["encoder"]["init_args"]
    return encoder["frontend"]["init_args"]


CONTRADICTIONS = {
    "inference_rate_over_a_16k_encoder": (
        "plain", lambda d: d["inference"].update(sample_rate=48000),
        ["inference.sample_rate 48000", "audio encoder's rate 16000"]),
    "fusion_on_a_model_without_fusion": (
        "plain", lambda d: d["inference"].update(fusion=True),
        ["inference.fusion true", "without fusion"]),
    "no_fusion_on_a_fusion_model": (
        "fused", lambda d: d["inference"].update(fusion=False),
        ["inference.fusion false", "with fusion"]),
    "window_longer_than_the_encoder's": (
        "fused", lambda d: d["inference"].update(clip_samples=2 * SR),
        [f"inference.clip_samples {2 * SR}", f"window of {SR} samples"]),
    "frontend_rate_contradicting_the_saved_filterbank": (
        "plain", lambda d: (_frontend(d).update(sample_rate=22050), d["inference"].update(sample_rate=22050)),
        ["built for sample_rate 16000", "says sample_rate 22050"]),
}


@pytest.mark.parametrize("case", sorted(CONTRADICTIONS))
def test_contradictions_are_refused_at_load_naming_both_values(case, plain_and_fused, tmp_path, capsys):
    which, edit, expected = CONTRADICTIONS[case]
    source = dict(zip(("plain", "fused"), plain_and_fused))[which]
    directory = shutil.copytree(source, tmp_path / "model")
    _edit_config(directory, edit)
    with pytest.raises(PretrainedError) as caught:
        clapkit.load(directory)
    assert all(text in str(caught.value) for text in expected), str(caught.value)
    assert str(caught.value).startswith(str(directory / CONFIG_NAME))
    if which == "plain" and "rate" in case:
        with pytest.raises(PretrainedError, match="contradicts|says sample_rate"):
            load_native(directory)  # the task (training, conversion) is built through the same check
    clip = save_audio(tmp_path / "clip.wav", tone(0.5, SR), SR)
    assert main(["embed", "--model", str(directory), str(clip), "-o", str(tmp_path / "e.npy"), "-q"]) == 2
    line = _one_error_line(capsys)
    assert all(text in line for text in expected), line


def test_consistent_directories_still_load(plain_and_fused):
    for directory in plain_and_fused:
        model = clapkit.load(directory)
        assert model.embed_audio(tone(1.5, SR), SR).shape == (1, 16)


def test_a_contradictory_model_is_not_saved(tmp_path):
    config = tiny_clap_config(sample_rate=SR)
    with pytest.raises(PretrainedError, match="inference.sample_rate 48000 contradicts"):
        save_pretrained(instantiate_model(config), tmp_path / "m", InferenceConfig(sample_rate=48000), config)
    assert not (tmp_path / "m").exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- tokenizers and labels


@pytest.fixture(scope="module")
def bert_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    text_dir = write_bert_dir(root / "bert")
    config = tiny_clap_config(text_model=str(text_dir), sample_rate=SR)
    torch.manual_seed(0)
    directory = save_pretrained(instantiate_model(config), root / "model", InferenceConfig(sample_rate=SR, clip_samples=SR),
                                config, assets={"text_model": text_dir})
    return directory


def test_a_tokenizer_larger_than_the_embedding_matrix_is_refused_at_load(bert_model, tmp_path, capsys):
    from transformers import AutoTokenizer

    directory = shutil.copytree(bert_model, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "text_model"))
    rows = len(tokenizer)
    assert rows > 50 and tokenizer.unk_token == "[UNK]"  # a real vocabulary, not a degenerate fixture
    assert tokenizer.add_tokens([f"newword{i}" for i in range(20)]) == 20
    tokenizer.save_pretrained(str(directory / "text_model"))
    with pytest.raises(PretrainedError, match=rf"has {rows + 20} tokens but its embedding matrix has {rows} rows"):
        clapkit.load(directory)
    assert main(["retrieve", "--model", str(directory), "--index", str(tmp_path / "none.npy"), "--query", "x",
                 "-q"]) == 2
    assert "no such embeddings file" in _one_error_line(capsys)  # the index is checked before the model
    clip = save_audio(tmp_path / "clip.wav", tone(0.5, SR), SR)
    assert main(["zeroshot", "--model", str(directory), "--label", "dog", str(clip), "-o",
                 str(tmp_path / "t.csv"), "-q"]) == 2
    line = _one_error_line(capsys)
    assert f"{rows + 20} tokens" in line and f"{rows} rows" in line


def test_a_query_of_unknown_symbols_warns_naming_it(bert_model, recwarn):
    model = clapkit.load(bert_model)
    with pytest.warns(UnknownTokensWarning, match="'日本語の犬'.*unknown token '\\[UNK\\]'"):
        model.embed_text(["a dog", "日本語の犬"])
    assert not [w for w in recwarn if issubclass(w.category, UnknownTokensWarning)]  # "a dog" did not warn
    # Why it matters: two such queries embed identically.
    torch.testing.assert_close(*model.embed_text(["日本語", "中文字"]).unbind(0))


def test_zeroshot_warns_of_a_label_of_unknown_symbols(bert_model, tmp_path, capsys):
    clip = save_audio(tmp_path / "clip.wav", tone(0.5, SR), SR)
    assert main(["zeroshot", "--model", str(bert_model), "--label", "dog", "--label", "日本語", str(clip), "-o",
                 str(tmp_path / "t.csv"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: label '日本語' tokenizes to nothing but the unknown token" in err and "'dog'" not in err


def test_labels_differing_only_in_case_warn(tmp_path, capsys):
    model_dir = save_tiny_native(tmp_path / "model")
    clips = write_wav_folder(tmp_path / "clips", count=1)
    out = tmp_path / "tags.csv"
    assert main(["zeroshot", "--model", str(model_dir), "--label", "Dog", "--label", "cat", "--label", "dog",
                 str(clips[0]), "-o", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "warning: labels 'Dog' and 'dog' differ only in case" in err and "cat" not in err
    assert {row.split(",")[2] for row in out.read_text().splitlines()[1:]} == {"Dog", "dog", "cat"}
