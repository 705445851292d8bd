import pytest
import torch

from diffeel import losses, scores
from diffeel.errors import DiffeelError
from diffeel.labels import ANOMALY_TRAIN_ID
from diffeel.models import SmallDeepLab
from diffeel.models.adapter import ResidualAdapter


def host(seed=0):
    torch.manual_seed(seed)
    return SmallDeepLab().eval()


def images(seed=1, n=2):
    return torch.rand(n, 3, 64, 96, generator=torch.Generator().manual_seed(seed))


def test_an_untrained_adapter_reproduces_the_host_exactly():
    closed = host()
    adapted = ResidualAdapter(closed, "layer3")
    x = images()
    with torch.no_grad():
        expected = closed(x)
    out1, out2 = adapted(x)
    assert torch.equal(out1, expected) and torch.equal(out2, expected)
    assert adapted.scoring_logits(x).shape == expected.shape


def test_only_the_adapter_gets_gradients_and_the_backward_stops_at_the_point():
    adapted = ResidualAdapter(host(), "layer3")
    torch.nn.init.normal_(adapted.residual_adapter.project.weight, std=0.1)  # a trained adapter: the body gets gradients too
    seen = {}
    adapted.host.layer2.register_forward_hook(lambda m, a, out: seen.setdefault("stem", out))
    adapted.train()
    _, out2 = adapted(images(), outputs=("rpl",))
    out2.square().mean().backward()
    assert not seen["stem"].requires_grad  # nothing before the point is in the graph
    assert all(p.grad is None for p in adapted.host.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapted.residual_adapter.parameters())
    assert not adapted.host.training  # the host's batch norm never trains


def test_a_few_eel_steps_raise_the_anomaly_energy_and_keep_the_inlier_prediction():
    closed = host()
    with torch.no_grad():  # a confident host, as a trained one is (a random one predicts nearly uniformly)
        closed.final[-1].weight.mul_(30)
        closed.final[-1].bias.mul_(30)
    torch.manual_seed(3)
    adapted = ResidualAdapter(closed, "layer3")
    x = images(n=4)
    labels = torch.zeros(4, 64, 96, dtype=torch.long)
    labels[:, 20:44, 30:60] = ANOMALY_TRAIN_ID
    x[:, :, 20:44, 30:60] = torch.tensor([0.9, 0.1, 0.8]).view(1, 3, 1, 1)  # a pasted magenta object
    anomaly, inlier = losses.split_train_labels(labels)
    with torch.no_grad():
        before = adapted(x).host_logits
    optimizer = torch.optim.Adam(adapted.trainable_parameters(), lr=1e-3)
    adapted.train()
    for _ in range(30):
        out1, out2 = adapted(x)
        loss = losses.rpl_eel_total_loss(out2, out1, anomaly, inlier, weight=0.5)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    adapted.eval()
    with torch.no_grad():
        out1, out2 = adapted(x)
    assert torch.equal(out1, before)  # the host never moves
    energy_before, energy_after = scores.energy(before), scores.energy(out2)
    assert energy_after[anomaly].mean() > energy_before[anomaly].mean() + 1.0  # anomalies look more anomalous
    agreement = (out2.argmax(1) == out1.argmax(1))[inlier].float().mean()
    assert agreement > 0.97  # the inlier prediction stays the host's (stated tolerance: 3 % of inlier pixels)


def test_a_wrong_point_fails_in_one_sentence():
    with pytest.raises(DiffeelError, match="no module 'layer9'"):
        ResidualAdapter(host(), "layer9")
    with pytest.raises(DiffeelError, match="names no adapter point"):
        ResidualAdapter(torch.nn.Sequential(torch.nn.Conv2d(3, 19, 1)))
    with pytest.raises(DiffeelError, match="run once per forward"):
        ResidualAdapter(host(), "aspp.features")  # a ModuleList never runs as a module
