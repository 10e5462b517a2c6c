"""RepL replaced-block fusion."""
import math

import timm
import torch

import splitfx
from splitfx.cli import main

from checks import assert_isolated


def test_vit_small_every_third_block_cuts_a_fifth_of_trainable_parameters():
    model = timm.create_model("vit_small_patch16_224")
    plan = splitfx.plan(model, torch.randn(2, 3, 224, 224), num_blocks=4, replace=3)
    assert plan.replaced == ["blocks.2", "blocks.5", "blocks.8"]
    assert plan.replace_skipped["blocks.11"] == "first or last block of its run"
    assert plan.trainable_params <= 0.8 * plan.trainable_params_before
    assert plan.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad) + 2 * 3 * 12


def test_cnn_runs_are_found():
    cases = [("resnet50", {"layer2.2", "layer3.2", "layer3.4"}),
             ("convnext_atto", {"stages.2.blocks.1", "stages.2.blocks.3"})]
    for name, expected in cases:
        plan = splitfx.plan(timm.create_model(name), torch.randn(2, 3, 64, 64), num_blocks=4, replace=2)
        assert set(plan.replaced) == expected
        assert plan.trainable_params < plan.trainable_params_before


def _vit():
    model = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10, depth=6)
    return model, torch.randn(4, 3, 64, 64), torch.randint(0, 10, (4,))


def test_local_training_keeps_isolation_and_neighbours_get_gradient():
    model, x, y = _vit()
    sm = splitfx.convert(model, x, num_blocks=3, recipe="dgl", replace=["blocks.2"], replace_mode="channel")
    assert sm.plan.replaced == ["blocks.2"]
    names = {id(p): n for n, p in sm.named_parameters()}
    owner = [k for k in range(sm.num_blocks)
             if any(names[id(p)].startswith("repl.") for p in sm.block_parameters(k))]
    assert len(owner) == 1, "the surrogate lives in exactly one block"
    reached = assert_isolated(sm, x, y)
    assert {"model.blocks.1.attn.qkv.weight", "model.blocks.3.attn.qkv.weight"} <= reached[owner[0]]
    assert "model.blocks.2.attn.qkv.weight" not in reached[owner[0]], "the replaced block owns no trainable weight"

def test_e2e_step_and_materialise_gives_an_ordinary_model():
    model, x, y = _vit()
    sm = splitfx.convert(model, x, recipe="e2e", replace=2)
    opt = torch.optim.SGD(sm.parameters(), lr=0.05)
    for _ in range(2):
        assert all(math.isfinite(v) for v in sm.train_step(x, y, opt))
    sm.eval()
    with torch.no_grad():
        fused = sm(x)
        sm.materialize()
        plain = model(x)
    assert (fused - plain).abs().max() <= 1e-6
    fresh = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=10, depth=6)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert all(p.requires_grad for p in model.parameters())


def test_cli_plan_shows_replacement(capsys):
    assert main(["plan", "resnet50", "--input-size", "3", "64", "64", "--batch", "2", "--replace", "2"]) == 0
    out = capsys.readouterr().out
    assert "RepL replaced: layer2.2, layer3.2, layer3.4" in out and "fewer" in out
