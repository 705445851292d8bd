"""The two public Cityscapes hosts as hosts: input sizes other than the official 1024×512, and the residual adapter at their points."""

import pytest
import torch

from diffeel.errors import DiffeelError
from diffeel.models import create_model
from diffeel.models.adapter import ResidualAdapter
from diffeel.models.loading import network_input_size

HOSTS = ("espnet_cityscapes", "espnetv2_cityscapes")


def test_network_input_size_keeps_the_official_size_or_scales_and_rounds_to_the_stride():
    assert network_input_size(360, 480, (1024, 512), 1.0, 32) == (512, 1024)
    assert network_input_size(360, 480, None, 1.0, 32) == (352, 480)
    assert network_input_size(360, 480, None, 2.0, 32) == (704, 960)
    assert network_input_size(10, 20, None, 1.0, 32) == (32, 32)


@pytest.mark.parametrize("name", HOSTS)
def test_hosts_run_at_the_images_own_size_and_take_an_adapter_that_starts_as_the_host(name):
    torch.manual_seed(0)
    host = create_model(name, published_weights=False, input_size=None).eval()
    images = 255 * torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        logits = host(images)
        assert logits.shape == (2, 19, 64, 96)
        out1, out2 = ResidualAdapter(host)(images)
    assert torch.equal(out1, logits) and torch.equal(out2, logits)


@pytest.mark.parametrize("name", HOSTS)
def test_a_bad_input_size_fails_in_one_sentence(name):
    with pytest.raises(DiffeelError, match="input_size must be"):
        create_model(name, published_weights=False, input_size=[512])
    with pytest.raises(DiffeelError, match="input_scale must be a positive number"):
        create_model(name, published_weights=False, input_size=None, input_scale=0)
