"""Each recipe's aux nets, loss terms and loss-carrying blocks against the published formulas
(../shared/METHODS.md), on a small ResNet and a small ViT, at every cut; recipe options from the API
and the command line; the reconstruction decoder's memory at 224²."""
import json
import math

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import splitfx
from splitfx.api.planning import split_of
from splitfx.cli import main
from splitfx.programs.config import TrainConfig, check_resume, with_all_options
from splitfx.recipes.auglocal import pyramid_depth
from splitfx.recipes.copies import EMA
from splitfx.recipes.decoders import Decoder, PatchDecoder
from splitfx.recipes.heads import NoHead
from splitfx.recipes.layout import infer_layout, map_spec

from checks import assert_isolated

SIZE = 64
MODELS = {  # cuts after whole stages / blocks, so the units before and after each cut are plain
    "resnet18": (dict(), ["layer1", "layer2", "layer3"]),
    "vit_tiny_patch16_224": (dict(img_size=SIZE), ["blocks.2", "blocks.5", "blocks.8"]),
}


def _convert(name: str, recipe, **options):
    kwargs, points = MODELS[name]
    model = timm.create_model(name, num_classes=10, **kwargs)
    x, y = torch.randn(2, 3, SIZE, SIZE), torch.randint(0, 10, (2,))
    recipe = splitfx.recipe(recipe, **options) if isinstance(recipe, str) else recipe
    plan = splitfx.plan(model, x, split_points=points, recipe=recipe)
    ctx = split_of(plan)
    sm = splitfx.convert(model, x, plan=plan)
    return model, x, y, sm, ctx


def _repeated(ctx) -> list[str]:
    return [u.name for u in ctx.graph.repeated()]


def _copied_from(copy: nn.Module, model: nn.Module, names: list[str]) -> str:
    """The unit a weight copy was made from: the one whose tensors it holds."""
    mine = copy.state_dict()
    for name in names:
        theirs = model.get_submodule(name).state_dict()
        if mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine):
            return name
    raise AssertionError("not a copy of any unit")


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


# ---- layouts -------------------------------------------------------------------------------------

class _Tokens(nn.Module):
    def __init__(self, prefix: int):
        super().__init__()
        self.num_prefix_tokens = prefix


def test_token_grids_come_from_the_models_prefix_count_and_a_sequence_stays_a_sequence():
    vit = map_spec((2, 17, 8), "NLC", (2, 3, 64, 64), _Tokens(1))
    assert (vit.prefix, vit.grid, vit.map_shape((2, 17, 8))) == (1, (4, 4), (8, 4, 4))
    x = torch.randn(2, 17, 8)
    assert torch.equal(vit(x)[:, :, 1, 2], x[:, 1 + 4 + 2]), "token 1 + 4·row + col sits at (row, col)"
    assert map_spec((2, 38, 8), "NLC", (2, 3, 96, 96), _Tokens(2)).grid == (6, 6)  # class + distillation
    assert map_spec((2, 21, 8), "NLC", (2, 3, 64, 64), _Tokens(5)).grid == (4, 4)  # four registers
    assert map_spec((2, 32, 8), "NLC", (2, 3, 64, 128), _Tokens(0)).grid == (4, 8)  # the input's aspect ratio
    for tokens, prefix in [(17, 0), (20, 1), (13, 1)]:  # within 8 of a square, but not the model's grid
        spec = map_spec((2, tokens, 8), "NLC", (2, 3, 64, 64), _Tokens(prefix))
        assert spec.grid is None and not spec.spatial
        assert spec.map_shape((2, tokens, 8)) == (8, 1, tokens), "a sequence is a 1×L row, every token kept"


def test_4d_layout_follows_the_input_aspect_ratio_and_an_empty_dim_is_never_spatial():
    assert infer_layout((2, 8, 7, 14), (112, 224)) == "NCHW"
    assert infer_layout((2, 7, 14, 8), (112, 224)) == "NHWC"
    assert infer_layout((2, 0, 14, 14), (224, 224)) == "NCHW", "an empty dim is never a spatial one"


# ---- DGL -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_dgl_mlp_sr_is_three_convs_and_three_linears_by_default(name):
    sm, ctx = _convert(name, "dgl")[3:]
    for head, b in zip(sm.heads, ctx.boundaries, strict=True):
        c, h, w = map_spec(b.shape, b.layout, b.input_shape, ctx.model).map_shape(b.shape)
        assert head.pool.output_size == (math.ceil(h / 4), math.ceil(w / 4))
        assert [type(m).__name__ for m in head.convs.modules() if not isinstance(m, nn.Sequential)] == \
            ["Conv2d", "BatchNorm2d", "ReLU"] * 3
        assert all(conv.kernel_size == (1, 1) and conv.in_channels == conv.out_channels == c
                   for conv in _convs(head))
        assert head.pool2.output_size == 2
        assert [type(m).__name__ for m in head.mlp.modules() if not isinstance(m, nn.Sequential)] == \
            ["Linear", "BatchNorm1d", "ReLU"] * 3
        assert head.fc.in_features == 4 * c and head.fc.out_features == 10
    small = _convert(name, "dgl", n=1, m=1)[3]
    assert all(len(h.convs) == 1 and len(h.mlp) == 1 for h in small.heads)


# ---- InfoPro -------------------------------------------------------------------------------------

def test_infopro_decoder_reduces_channels_before_upsampling_in_stages():
    # The authors' ImageNet decoder from a 28² map: 1×1 to 128, then 32 at 56², 12 at 112², 3 at 224².
    d = Decoder(512, (28, 28), (224, 224))
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in _convs(d)] == \
        [(512, 128, 1), (128, 32, 3), (32, 12, 3), (12, 3, 3)]
    assert d.sizes == [(56, 56), (112, 112)]
    assert d(torch.randn(1, 512, 28, 28)).shape == (1, 3, 224, 224)
    # From 7²: one stage more per halving, 64 wide; from a map at half the image size: 12 then 3.
    assert [c.out_channels for c in _convs(Decoder(2048, (7, 7), (224, 224)))] == [128, 64, 64, 32, 12, 3]
    assert [c.out_channels for c in _convs(Decoder(64, (16, 16), (32, 32)))] == [12, 3]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_infopro_heads_and_lambdas_follow_the_published_schedule(name):
    _, x, y, sm, _ = _convert(name, "infopro")
    for k, head in enumerate(sm.heads):
        t = k / (sm.num_blocks - 2)
        recon, task = 5 * (1 - t), 1 * t  # lambda1 (5, 0), lambda2 (0, 1)
        assert head.weights == {n: w for n, w in (("recon", recon), ("task", task)) if w}
        assert (head.decoder is not None) == (recon > 0) and (head.classifier is not None) == (task > 0)
        if head.decoder is not None:
            first = _convs(head.decoder)[0]
            assert first.kernel_size == (1, 1) and first.out_channels <= 128, "channels reduced first"
            assert head.decoder(sm.merges[k](*_handed(sm, k, x))).shape == x.shape
        if head.classifier is not None:
            assert len(_convs(head.classifier)) == 1 and head.classifier.fc[-1].out_features == 10  # 1c2f
    # The loss is λ1·MSE(decoder, input) + λ2·CE(classifier) on the cut's tensors.
    middle = sm.heads[1]
    features = sm.merges[1](*_handed(sm, 1, x))
    expected = 2.5 * F.mse_loss(middle.decoder(features), x) + 0.5 * F.cross_entropy(middle.classifier(features), y)
    assert torch.allclose(sm.recipe.local_loss(middle, features, y, (x,)), expected)


def _handed(sm, k: int, x: torch.Tensor) -> tuple:
    h = (x,)
    for block in sm.blocks[:k + 1]:
        out = block(*h)
        h = out if isinstance(out, tuple) else (out,)
    return h


def test_infopro_lambda_endpoints_are_options():
    recipe = splitfx.recipe("infopro", lambda1=(5, 0.5), lambda2=1)
    assert (recipe.lambda1, recipe.lambda2) == ((5.0, 0.5), (1.0, 1.0))
    sm = _convert("resnet18", recipe)[3]
    assert [h.weights for h in sm.heads] == [{"recon": 5.0, "task": 1.0}, {"recon": 2.75, "task": 1.0},
                                             {"recon": 0.5, "task": 1.0}]
    with pytest.raises(splitfx.ArgumentError, match="no loss term"):
        splitfx.recipe("infopro", lambda1=(5, 0), lambda2=0)


@pytest.mark.parametrize("name,size", [("resnet50", 224), ("vit_small_patch16_224", 224)])
def test_decoder_saves_less_than_the_block_it_trains(name, size):
    plan = splitfx.plan(timm.create_model(name), torch.randn(2, 3, size, size), 4, recipe="infopro")
    for block in plan.blocks[:-1]:
        assert 0 < block.aux_saved_bytes < block.saved_bytes - block.aux_saved_bytes, block.index


# ---- AugLocal ------------------------------------------------------------------------------------

def test_auglocal_pyramid_formula():
    assert [pyramid_depth(3, 0.5, t) for t in (0, 0.25, 0.5, 0.75, 1)] == [3, 3, 2, 2, 2]
    assert [pyramid_depth(2, 0.5, t) for t in (0, 0.5, 1)] == [2, 2, 2]  # + c·t keeps d = 2 at 2
    assert [pyramid_depth(4, 1.0, t) for t in (0, 0.5, 1)] == [4, 2, 1]  # never below 1


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_auglocal_samples_fresh_copies_of_later_blocks_with_pyramidal_depth(name, d):
    model, _, _, sm, ctx = _convert(name, "auglocal", d=d)
    repeated = _repeated(ctx)
    kinds = {type(model.get_submodule(n)) for n in repeated}
    assert not {"fc", "head", "norm", "conv1"} & set(repeated), "only the model's repeated blocks"
    for head, b in zip(sm.heads, ctx.boundaries, strict=True):
        before = sum(u.end <= b.position for u in ctx.graph.repeated())
        after = len(repeated) - before
        depth = min(max(1, round(d * (1 - 0.5 * before / len(repeated)) + 0.5 * before / len(repeated))), after)
        picks = [round(before - 1 + after / depth * i) for i in range(1, depth + 1)]
        copies = [m for m in head if type(m) in kinds]
        assert len(copies) == depth and isinstance(head[-1], splitfx.recipes.heads.PoolLinear)
        assert picks[-1] == len(repeated) - 1, "the deepest sampled layer is the network's last"
        for copy, pick in zip(copies, picks, strict=True):
            source = model.get_submodule(repeated[pick])
            assert [p.shape for p in copy.parameters()] == [p.shape for p in source.parameters()]
            assert not all(torch.equal(a, b) for a, b in zip(copy.parameters(), source.parameters(), strict=True)), \
                "a fresh copy: same architecture, new weights"


# ---- MAN -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_man_copies_and_averages_the_next_block_with_its_own_lambdas(name):
    model, _, _, sm, ctx = _convert(name, "man")
    repeated = _repeated(ctx)
    for head, b in zip(sm.heads, ctx.boundaries, strict=True):
        nxt = next(u.name for u in ctx.graph.repeated() if u.start >= b.position)
        assert head.source == nxt and isinstance(head.ema, EMA) and head.ema.momentum == 0.995
        assert head.scale.item() == 1.0, "s starts at 1: y = LB(x) + EMA(x)"
        if name == "resnet18":  # InfoPro's heads, MAN's λ at every cut
            assert _copied_from(head.lb, model, repeated) == nxt
            assert head.head.weights == {"recon": 5.0, "task": 0.5}
            assert head.head.decoder is not None and head.head.classifier is not None
        else:  # MAN++ on ViT: LB = the next two blocks, EMA of the first, LayerNorm → Linear on the class token
            lb = [m for m in head.lb.modules() if type(m) is type(model.get_submodule(nxt))]
            assert [_copied_from(m, model, repeated) for m in lb] == repeated[repeated.index(nxt):][:2]
            classifier = head.head.classifier
            assert isinstance(classifier.norm, nn.LayerNorm) and classifier.class_token
            assert head.head.weights == {"task": 1.0}
    with pytest.raises(splitfx.ArgumentError, match="never move"):
        splitfx.recipe("man", momentum=1.0)


@pytest.mark.parametrize("recipe", ["man", "mlaan", "hpff"])
def test_recompute_keeps_the_gradients_and_statistics_and_lightens_the_heads(recipe):
    """recompute=True (the default) recomputes MAN's copies, MLAAN's leap copies and HPFF's quadrant
    decoders in backward: the gradients and BatchNorm running statistics of recompute=False (as
    published; the statistics move once, not again in the recompute), a lighter head in the plan."""
    grads, stats, aux = [], [], []
    for recompute in (True, False):
        torch.manual_seed(0)
        _, x, y, sm, _ = _convert("resnet18", splitfx.recipe(recipe, recompute=recompute))
        sm.train()
        for loss in sm.local_losses(x, y):
            loss.backward()
        grads.append({n: p.grad for n, p in sm.named_parameters() if p.grad is not None})
        stats.append({n: b.clone() for n, b in sm.named_buffers()})
        aux.append([b.aux_saved_bytes for b in sm.plan.blocks[:-1]])
    assert grads[0].keys() == grads[1].keys() and stats[0].keys() == stats[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)
    for name in stats[0]:
        torch.testing.assert_close(stats[0][name], stats[1][name], msg=name)
    assert all(a <= b for a, b in zip(*aux, strict=True)) and sum(aux[0]) < sum(aux[1]), aux
    with pytest.raises(splitfx.ArgumentError, match="recompute must be True or False"):
        splitfx.recipe(recipe, recompute="yes")


# ---- HPFF ----------------------------------------------------------------------------------------

def test_hpff_patch_decoder_reconstructs_each_quadrant_from_its_own_quadrant():
    spec = map_spec((2, 8, 6, 6), "NCHW", (2, 3, 32, 32), None)
    decoder = PatchDecoder(spec, (2, 8, 6, 6), (2, 3, 32, 32))
    assert len(decoder.decoders) == 4
    features = torch.randn(2, 8, 6, 6, requires_grad=True)
    image = torch.randn(2, 3, 32, 32)
    assert decoder.decoders[0](features[..., :3, :3]).shape == (2, 3, 16, 16)
    F.mse_loss(decoder.decoders[3](features[..., 3:, 3:]), image[..., 16:, 16:]).backward()
    touched = features.grad.abs().sum(1) > 0
    assert touched[:, 3:, 3:].all() and not touched[:, :3].any() and not touched[:, :, :3].any()
    quadrants = [(slice(0, 3), slice(0, 3), slice(0, 16), slice(0, 16)), (slice(0, 3), slice(3, 6), slice(0, 16),
                 slice(16, 32)), (slice(3, 6), slice(0, 3), slice(16, 32), slice(0, 16)),
                 (slice(3, 6), slice(3, 6), slice(16, 32), slice(16, 32))]
    expected = sum(F.mse_loss(dec(features[..., a, b]), image[..., c, d])
                   for dec, (a, b, c, d) in zip(decoder.decoders, quadrants, strict=True))
    assert torch.allclose(decoder.loss(features, image), expected), "the four reconstruction losses, summed"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hpff_has_separate_2c2f_heads_a_patch_decoder_and_no_loss_on_block_0(name):
    _, x, y, sm, _ = _convert(name, "hpff")
    assert isinstance(sm.heads[0], NoHead) and not list(sm.heads[0].parameters())
    for k, head in enumerate(sm.heads[1:], start=1):
        t = k / (sm.num_blocks - 2)
        independent, cascade = head.independent.classifier, head.cascade
        assert len(_convs(independent)) == 2 and len(_convs(cascade.classifier)) == 2, "2c2f"
        assert independent is not cascade.classifier
        assert isinstance(cascade.decoder, PatchDecoder) and len(cascade.decoder.decoders) == 4
        assert cascade.weights == {"recon": 5 * (1 - t), "task": 0.5 * (1 - t)}
    recipe = sm.recipe
    assert [recipe.reaches(k, 4) for k in range(4)] == [(0, 1), (1, 2), (2, 3), (3,)]
    assert recipe.aux_reaches(0, sm.heads) == [sm.heads[1].cascade]
    assert recipe.aux_reaches(1, sm.heads) == [sm.heads[1].independent, sm.heads[2].cascade]
    assert recipe.aux_reaches(2, sm.heads) == [sm.heads[2].independent]
    reached = assert_isolated(sm, x, y)
    assert not any(n.startswith("heads.0.") for r in reached for n in r)
    losses = list(sm.local_losses(x, y))
    assert torch.allclose(losses[3], 0.001 * F.cross_entropy(sm(x), y))


def _published_cascade_loss(sm, x, y, last_independent: bool) -> torch.Tensor:
    """HPFF's / MLAAN's published objective, term by term: block k ≥ 1 trained by ``wx·I_k + wy·C_k``
    (the last block through the model's own head; MLAAN's by its cascade alone, at weight 1)."""
    parts, r = sm.parts(), sm.recipe
    last, total = sm.num_blocks - 1, 0.0
    inputs = [(x,)]
    for k in range(last):
        out = sm.blocks[k](*inputs[-1])
        inputs.append(tuple(t.detach() for t in (out if isinstance(out, tuple) else (out,))))
    for k in range(1, last + 1):
        out = sm.blocks[k](*inputs[k])
        prev = sm.blocks[k - 1](*inputs[k - 1])
        z = parts.attached[k](*(prev if isinstance(prev, tuple) else (prev,)))
        if k < last:
            head, merge = sm.heads[k], sm.merges[k]
            total = total + r.wx * head.independent.loss(merge(out), y, x) + r.wy * head.cascade.loss(merge(z), y, x)
        elif last_independent:
            total = total + r.wx * F.cross_entropy(out, y) + r.wy * F.cross_entropy(z, y)
        else:
            total = total + F.cross_entropy(z, y)
    return total


@pytest.mark.parametrize("recipe", ["hpff", "mlaan"])
def test_cascade_losses_give_the_published_gradients(recipe):
    """The losses are grouped so each runs two neighbouring blocks once; their summed gradients are
    those of the published per-block losses."""
    _, x, y, sm, _ = _convert("resnet18", recipe, **({"lambda2": (0.5, 0.1)} if recipe == "hpff" else {}))
    sm.train()
    sm.zero_grad(set_to_none=True)
    for loss in sm.local_losses(x, y):
        loss.backward()
    grouped = {n: p.grad.clone() for n, p in sm.named_parameters() if p.grad is not None}
    sm.zero_grad(set_to_none=True)
    _published_cascade_loss(sm, x, y, recipe == "hpff").backward()
    published = {n: p.grad for n, p in sm.named_parameters() if p.grad is not None}
    assert grouped.keys() == published.keys()
    for name, grad in grouped.items():
        torch.testing.assert_close(grad, published[name], msg=name)


def test_hpff_keeps_zero_weighted_terms_so_its_losses_always_reach_the_same_blocks():
    _, x, y, sm, _ = _convert("resnet18", "hpff")
    assert sm.heads[2].cascade.weights == {"recon": 0.0, "task": 0.0}  # README: λ (5, 0.5) → (0, 0)
    assert_isolated(sm, x, y)  # loss 1 still reaches block 2 and head 2's cascade path
    sm.zero_grad(set_to_none=True)
    list(sm.local_losses(x, y))[1].backward()
    assert all(p.grad is not None and not p.grad.any() for p in sm.heads[2].cascade.parameters())
    assert all(p.grad is not None for p in sm.heads[1].independent.parameters())


# ---- MLAAN ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_mlaan_leap_chain_ends_at_the_last_block_with_ema_on_the_first(name):
    model, x, y, sm, ctx = _convert(name, "mlaan")
    repeated = _repeated(ctx)
    assert isinstance(sm.heads[0], NoHead)
    expected = {  # stage transitions first, then the last stage, ending at the last unit, four at most
        "resnet18": [["layer3.0", "layer3.1", "layer4.0", "layer4.1"], ["layer4.0", "layer4.1"]],
        "vit_tiny_patch16_224": [["blocks.6", "blocks.8", "blocks.10", "blocks.11"],
                                 ["blocks.9", "blocks.10", "blocks.11"]],
    }[name]
    for head, chain in zip(sm.heads[1:], expected, strict=True):
        leap = head.cascade.classifier
        copies = [leap.first, *(m for m in leap.rest if type(m) is type(leap.first))]
        assert [_copied_from(c, model, repeated) for c in copies] == chain, "copies of the backbone's weights"
        assert chain[-1] == repeated[-1]
        assert leap.source == chain[0] and _copied_from(leap.ema.module, model, repeated) == chain[0]
        assert leap.ema.momentum == 0.999
        assert isinstance(head.independent.classifier, splitfx.recipes.heads.PoolLinear)
    assert_isolated(sm, x, y)
    short = _convert(name, "mlaan", leap=2)[3]
    assert all(1 + sum(type(m) is type(h.cascade.classifier.first) for m in h.cascade.classifier.rest) <= 2
               for h in short.heads[1:])


def test_mlaan_last_block_keeps_only_the_cascade_loss():
    _, x, y, sm, _ = _convert("resnet18", "mlaan")
    last = list(sm.local_losses(x, y))[-1]
    h = _handed(sm, 1, x)
    h = tuple(t.detach() for t in h)
    out2 = sm.blocks[2](*h)
    cascaded = sm.blocks[3](*(out2 if isinstance(out2, tuple) else (out2,)))
    assert torch.allclose(last, F.cross_entropy(cascaded, y))


# ---- options: API, command line, training config -------------------------------------------------

def test_a_bad_option_names_the_recipe_and_what_it_accepts():
    with pytest.raises(splitfx.ArgumentError, match=r"recipe 'dgl' has no option 'lambda1'.*n \(default 3\)"):
        splitfx.recipe("dgl", lambda1=(5, 0))
    with pytest.raises(splitfx.ArgumentError, match=r"recipe 'auglocal'.*d must be an integer"):
        splitfx.recipe("auglocal", d=0)
    with pytest.raises(splitfx.ArgumentError, match=r"no option 'n'; it accepts: no options"):
        splitfx.recipe("linear", n=1)
    assert splitfx.recipe("mlaan", leap=3).options() == {"wx": 0.001, "wy": 0.999, "momentum": 0.999, "leap": 3,
                                                        "recompute": True}


def test_cli_recipe_options(capsys):
    argv = ["plan", "resnet18", "--input-size", "64", "--batch", "2", "--recipe", "dgl", "--json"]
    assert main(argv) == 0
    default = json.loads(capsys.readouterr().out)
    assert main([*argv, "--recipe-option", "n=1", "--recipe-option", "m=1"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["recipe"] == "dgl"
    assert sum(b["aux_params"] for b in small["blocks"]) < sum(b["aux_params"] for b in default["blocks"])
    assert main([*argv, "--recipe-option", "lambda1=(5,0)"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("splitfx: error:") and "'lambda1'" in err and "n (default 3)" in err
    assert main([*argv, "--recipe-option", "n"]) == 2 and "KEY=VALUE" in capsys.readouterr().err
    assert main([*argv, "--recipe-option", "n=1", "--recipe-option", "n=2"]) == 2
    assert "given twice" in capsys.readouterr().err


def test_training_records_every_option_and_resume_refuses_another():
    config = with_all_options(TrainConfig(recipe="infopro", recipe_options={"lambda1": (5, 0.5)}))
    assert config.recipe_options == {"lambda1": (5.0, 0.5), "lambda2": (0.0, 1.0)}
    saved = dict(vars(config))
    check_resume(config, saved, "ckpt")
    other = with_all_options(TrainConfig(recipe="infopro"))
    with pytest.raises(splitfx.SplitFXError, match=r"--recipe-option .*checkpoint: \{'lambda1': \(5.0, 0.5\)"):
        check_resume(other, saved, "ckpt")
    del saved["recipe_options"]  # a checkpoint written before recipes had options
    with pytest.raises(splitfx.SplitFXError, match="does not record its recipe's options"):
        check_resume(config, saved, "ckpt")


def _structure(head: nn.Module) -> tuple:
    """What a head is made of: each submodule's name and class, each tensor's name and shape, and
    the loss weights of heads that have them."""
    return (tuple((n, type(m).__name__) for n, m in head.named_modules()),
            tuple((n, tuple(t.shape)) for n, t in (*head.named_parameters(), *head.named_buffers())),
            tuple(sorted((n, repr(getattr(m, "weights", None))) for n, m in head.named_modules())))


@pytest.mark.parametrize("name", [r for r in splitfx.list_recipes() if r not in ("e2e", "ffr")])  # ffr: test_ffr.py
def test_boundaries_with_equal_head_keys_get_identical_heads(name):
    """The head-key contract (``Recipe`` docstring): the planner costs one head per key, so equal keys
    must mean structurally identical heads."""
    from splitfx.api.planning import _defaults, _planner

    model = timm.create_model("resnet18", num_classes=10)
    planner = _planner(model, (torch.randn(2, 3, 32, 32),), **_defaults(dict(recipe=name)))
    groups: dict = {}
    for b in planner._boundaries(4):
        groups.setdefault(planner.recipe.head_key(b, planner.graph), []).append(b)
    shared = [g for g in groups.values() if len(g) > 1]
    assert shared, "no two cuts share a key: the test compares nothing"
    for group in shared:
        first = _structure(planner.recipe.make_head(group[0], planner.graph))
        for b in group[1:]:
            assert _structure(planner.recipe.make_head(b, planner.graph)) == first, (b.position, group[0].position)


@pytest.mark.parametrize("channels,widths", [(512, [128, 256, 512, 2048]), (1024, [256, 256, 512, 2048]),
                                             (2048, [512, 512, 1024, 2048])])
def test_imagenet_sized_cuts_get_the_papers_imagenet_head(channels, widths):
    """InfoPro's, HPFF's and MAN's ImageNet code reduce first (networks/InfoProAux.py); their CIFAR
    head keeps the input width, 9.4 M parameters per convolution at 1024 channels."""
    from splitfx.recipes.heads import Classifier, imagenet_sized
    from splitfx.recipes.layout import Layout, map_spec

    shape = (2, channels, 14, 14)
    spec = map_spec(shape, Layout.NCHW, (2, 3, 224, 224), nn.Identity())
    assert imagenet_sized((2, 3, 224, 224)) and not imagenet_sized((2, 3, 32, 32))
    head = Classifier(spec, shape, 1000, convs=2, imagenet=True)
    assert [m.out_channels for m in _convs(head)] == widths
    assert head(torch.randn(shape)).shape == (2, 1000)
    cifar = Classifier(spec, shape, 1000, convs=2)
    assert [m.out_channels for m in _convs(cifar)] == [channels, channels]
