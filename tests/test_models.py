"""The networks splitfx ships: the CIFAR ResNets of the papers' memory tables, the benchmark's hybrid ViT."""
import torch
from torch import nn

from splitfx.models import resnet32, resnet110
from splitfx.programs.models import create_model, default_input_size


def test_resnet110_is_the_six_n_plus_two_network():
    model = resnet110()
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                and not (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1))]
    assert len(weighted) == 110, "108 convolutions in 54 blocks, the stem and the classifier"
    assert [len(s) for s in (model.layer1, model.layer2, model.layer3)] == [18, 18, 18]
    assert 1.7e6 < sum(p.numel() for p in model.parameters()) < 1.8e6  # 1.7M, as the paper's table
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in resnet32().parameters()) < 0.47e6


def test_the_command_line_finds_it_and_its_input_size():
    model = create_model("splitfx.models:resnet110")
    assert default_input_size(model) == (3, 32, 32) and model.pretrained_cfg["architecture"] == "resnet110"


def test_the_hybrid_vit_splits_into_sixteen_blocks_that_chain_to_it_exactly():
    import splitfx
    from splitfx.models import hybrid_vit8

    torch.manual_seed(0)
    model = hybrid_vit8().eval()
    assert 0.30e6 < sum(p.numel() for p in model.parameters()) < 0.32e6
    x = torch.randn(2, 3, 32, 32)
    sm = splitfx.convert(model, x, num_blocks=16).eval()
    assert sm.num_blocks == 16
    assert torch.equal(sm.chained(x), model(x))
