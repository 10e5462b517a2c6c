"""SplitModule behaviour a training loop relies on."""
import copy

import pytest
import timm
import torch

import splitfx


def _small():
    model = timm.create_model("resnet18", num_classes=5)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    return model, x, y


def test_state_dict_is_model_plus_heads_and_loads_into_a_fresh_model():
    model, x, _ = _small()
    sm = splitfx.convert(model, x, num_blocks=3)
    keys = sm.state_dict().keys()
    assert {k[len("model."):] for k in keys if k.startswith("model.")} == model.state_dict().keys()
    assert all(k.startswith(("model.", "heads.")) for k in keys)
    fresh = timm.create_model("resnet18", num_classes=5)
    fresh.load_state_dict(sm.model.state_dict(), strict=True)


def test_blocks_share_the_model_modules_and_follow_reassignment():
    model, x, _ = _small()
    sm = splitfx.convert(model, x, num_blocks=3)
    conv = model.layer4[1].conv2
    assert any(m is conv for b in sm.blocks for m in b.modules())
    model.layer4[1].conv2 = torch.nn.Identity()  # e.g. load_state_dict(assign=True) or a surgery
    assert not any(m is conv for b in sm.blocks for m in b.modules())


def test_train_step_learns_a_fixed_batch_with_grad_scaler():
    model, x, y = _small()
    sm = splitfx.convert(model, x, num_blocks=3)
    opt = torch.optim.SGD(sm.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    first = sm.train_step(x, y, opt, scaler)
    for _ in range(15):
        last = sm.train_step(x, y, opt, scaler)
    assert len(first) == 3 and all(b < a for a, b in zip(first, last, strict=True))


def test_deepcopy_keeps_blocks_bound_to_the_copy():
    model, x, _ = _small()
    sm = splitfx.convert(model, x, num_blocks=3).eval()
    twin = copy.deepcopy(sm)
    assert all(b.model is twin.model for b in twin.blocks) and twin.traced.model is twin.model
    with torch.no_grad():
        assert torch.equal(twin(x), sm(x))


def test_step_each_block_holds_one_blocks_gradients_at_a_time():
    model, x, y = _small()
    sm = splitfx.convert(model, x, num_blocks=3)
    seen = []

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append({id(p) for group in self.param_groups for p in group["params"] if p.grad is not None})
            return super().step(closure)

    sm.train_step(x, y, Recording(sm.parameters(), lr=0.1), step_each_block=True)
    blocks = [{id(p) for p in sm.block_parameters(k)} | {id(p) for p in sm.heads[k].parameters()} if k < 2
              else {id(p) for p in sm.block_parameters(k)} for k in range(3)]
    assert seen == blocks
    assert all(p.grad is None for p in sm.parameters()), "every gradient freed once stepped"
    with pytest.raises(ValueError, match="GradScaler"):
        sm.train_step(x, y, torch.optim.SGD(sm.parameters(), lr=0.1), torch.amp.GradScaler("cpu"), step_each_block=True)
