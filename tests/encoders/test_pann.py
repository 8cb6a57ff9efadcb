import pytest
import torch

from clapkit.encoders.pann import Cnn6, Cnn10, Cnn14


@pytest.mark.parametrize("cls,width", [(Cnn14, 2048), (Cnn10, 1024), (Cnn6, 512)])
def test_reference_widths(cls, width):
    model = cls(variant="base")
    assert model.output_dim == width and model.sample_rate == 48000
    assert model.fc_audioset.out_features == 527


@pytest.mark.parametrize("cls", [Cnn14, Cnn10, Cnn6])
def test_tiny_forward_backward(cls):
    model = cls(variant="tiny", spec_augment=True)
    out = model(torch.randn(3, 24000))
    assert out.embedding.shape == (3, model.output_dim)
    assert len(out.features) == len(model.pools)
    out.embedding.sum().backward()
    assert model.conv_block1.conv1.weight.grad is not None


def test_eval_is_deterministic_and_multichannel_is_averaged():
    model = Cnn6(variant="tiny").eval()
    x = torch.randn(2, 2, 16000)
    a = model(x).embedding
    b = model(x.mean(1)).embedding
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, model(x).embedding, rtol=0, atol=0)
