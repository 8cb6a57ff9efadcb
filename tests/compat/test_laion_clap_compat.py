"""``clapkit.compat.laion_clap`` gives the arrays laion_clap 1.1.7's own ``CLAP_Module`` methods give.

The reference ``CLAP_Module`` is the package's class with its model built offline from random
weights (``helpers.laion``: a small HTSAT of the reference's own class, one-layer RoBERTa at the
hard-coded 768 width) and saved in the official layout; its random crops are pinned to clapkit's
deterministic rule while it runs. Clips of 3 s, 10 s and 25 s.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from clapkit.compat import laion_clap
from helpers import laion

pytestmark = pytest.mark.parity
try:
    laion.reference()
    import laion_clap.hook as reference_hook  # noqa: F401 - the reference package
except ImportError as exc:
    pytest.skip(f"laion-clap reference package unavailable: {exc}", allow_module_level=True)

TOL = 1e-4
TEXTS = ["a dog barks in the distance", "the sound of a cat", "music"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, laion_small):
    """The reference ``CLAP_Module`` around the run-wide model (``helpers.references.laion_small``,
    only read), clapkit's on its checkpoint, and a folder for this module's files."""
    import laion_clap.hook as hook
    from transformers import RobertaTokenizer

    root = tmp_path_factory.mktemp("laion_compat")
    ref_model, checkpoint, text_dir = laion_small.model, laion_small.checkpoint, laion_small.text_dir
    reference = hook.CLAP_Module.__new__(hook.CLAP_Module)  # its __init__ downloads roberta-base
    nn.Module.__init__(reference)
    reference.enable_fusion, reference.model, reference.model_cfg = False, ref_model, ref_model.model_cfg
    reference.tokenize = RobertaTokenizer.from_pretrained(str(text_dir))
    laion.assert_tokenizer_not_degenerate(reference.tokenize)  # what the reference's text path reads
    ours = laion_clap.CLAP_Module(enable_fusion=False, amodel=None, device="cpu", text_model=text_dir)
    ours.load_ckpt(checkpoint, verbose=False)
    return reference, ours, root


def _waves():
    return laion.test_waves()


def test_get_audio_embedding_from_data_numpy(models):
    reference, ours, _ = models
    waves = _waves()
    with laion.single_thread():
        got = [ours.get_audio_embedding_from_data(w[None]) for w in waves]
        with laion.deterministic_reference_crops():
            want = [reference.get_audio_embedding_from_data(w[None]) for w in waves]
    for g, w in zip(got, want):
        assert isinstance(g, np.ndarray) and g.dtype == w.dtype == np.float32 and g.shape == w.shape == (1, 512)
        assert np.abs(g - w).max() <= TOL
    batch = np.stack([waves[1], waves[1][::-1].copy()])  # [N, T] as the reference documents
    with laion.single_thread():
        assert np.abs(ours.get_audio_embedding_from_data(batch)
                      - reference.get_audio_embedding_from_data(batch)).max() <= TOL


def test_get_audio_embedding_from_data_tensor_keeps_gradients(models):
    reference, ours, _ = models
    x = torch.from_numpy(np.stack([_waves()[1]] * 2)).requires_grad_(True)
    with laion.single_thread():
        got = ours.get_audio_embedding_from_data(x, use_tensor=True)
        want = reference.get_audio_embedding_from_data(x.detach().clone(), use_tensor=True)
    assert isinstance(got, torch.Tensor) and got.shape == want.shape == (2, 512) and got.dtype == torch.float32
    assert (got.detach() - want.detach()).abs().max() <= TOL
    got.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_get_audio_embedding_from_filelist(models):
    reference, ours, root = models
    files = []
    for i, wave in enumerate(_waves()):
        path = root / f"clip{i}.wav"
        sf.write(path, wave, 48000, subtype="FLOAT")
        files.append(str(path))
    with laion.single_thread():
        got = ours.get_audio_embedding_from_filelist(files)
        with laion.deterministic_reference_crops():
            want = reference.get_audio_embedding_from_filelist(files)
        as_tensor = ours.get_audio_embedding_from_filelist(files, use_tensor=True)
    assert got.dtype == np.float32 and got.shape == want.shape == (3, 512)
    assert np.abs(got - want).max() <= TOL
    # use_tensor keeps the autograd graph (as the reference does), and with gradients on HTSAT
    # takes its training kernels: equal to float rounding, no longer bit for bit
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.requires_grad
    assert np.abs(as_tensor.detach().numpy() - got).max() <= 1e-6


def test_use_tensor_outputs_require_grad_as_the_reference_does(models):
    """Every ``use_tensor=True`` path returns what laion_clap returns regarding ``requires_grad``
    (it runs without ``no_grad``, so the result carries the graph to the parameters), and both
    return a detached result under the caller's ``torch.no_grad()``."""
    reference, ours, root = models
    waves = _waves()[:2]
    files = []
    for i, wave in enumerate(waves):
        path = root / f"grad{i}.wav"
        sf.write(path, wave, 48000, subtype="FLOAT")
        files.append(str(path))
    x = torch.from_numpy(np.stack([waves[1], waves[1][::-1].copy()]))
    calls = {
        "filelist": lambda m: m.get_audio_embedding_from_filelist(files, use_tensor=True),
        "data": lambda m: m.get_audio_embedding_from_data(x.clone(), use_tensor=True),
        "text": lambda m: m.get_text_embedding(TEXTS, tokenizer=reference.tokenizer, use_tensor=True),
    }
    with laion.single_thread(), laion.deterministic_reference_crops():
        for name, call in calls.items():
            want, got = call(reference), call(ours)
            assert isinstance(got, torch.Tensor) and got.requires_grad == want.requires_grad, name
            assert want.requires_grad, f"{name}: the reference keeps gradients"
            assert (got.detach() - want.detach()).abs().max() <= TOL, name
            with torch.no_grad():
                assert not call(reference).requires_grad and not call(ours).requires_grad, name
    # the graph reaches the audio tower's parameters
    ours.get_audio_embedding_from_filelist(files, use_tensor=True).sum().backward()
    grads = [p.grad for p in ours.clap.model.towers["audio"].parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    ours.clap.model.zero_grad(set_to_none=True)


def test_get_text_embedding(models):
    reference, ours, _ = models
    got, want = ours.get_text_embedding(TEXTS), reference.get_text_embedding(TEXTS)
    assert got.dtype == np.float32 and got.shape == want.shape == (3, 512)
    assert np.abs(got - want).max() <= TOL
    tensor = ours.get_text_embedding(TEXTS, use_tensor=True)
    assert isinstance(tensor, torch.Tensor) and (tensor.detach() - torch.from_numpy(want)).abs().max() <= TOL
    # a caller's tokenizer, as the reference accepts
    custom = ours.get_text_embedding(TEXTS, tokenizer=reference.tokenizer)
    assert np.abs(custom - want).max() <= TOL


def test_refusals(laion_small, tmp_path):
    text_dir, checkpoint = laion_small.text_dir, laion_small.checkpoint
    fresh = laion_clap.CLAP_Module(enable_fusion=False, device="cpu", text_model=text_dir)
    with pytest.raises(RuntimeError, match="load_ckpt"):
        fresh.get_text_embedding(["a"])
    with pytest.raises(ValueError, match="never downloads"):
        fresh.load_ckpt()
    with pytest.raises(ValueError, match="expected a fusion model"):
        laion_clap.CLAP_Module(enable_fusion=True, amodel=None, device="cpu",
                               text_model=text_dir).load_ckpt(checkpoint, verbose=False)
    with pytest.raises(ValueError, match="expected PANN-14"):
        laion_clap.CLAP_Module(amodel="PANN-14", device="cpu",
                               text_model=text_dir).load_ckpt(checkpoint, verbose=False)
