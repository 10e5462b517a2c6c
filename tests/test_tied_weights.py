"""Tied weights (``lm_head.weight = wte.weight``): named by both paths where they close the cuts, and
``tied="detach"`` cuts between their uses, the first block training the weight and later blocks
reading it detached (``passes/sharing.py``, ``passes/emit.py``)."""
import pytest
import torch
import torch.nn.functional as F
from test_shape_reads import GPT
from torch import nn

import splitfx
from splitfx.cli import main

from checks import assert_eval_equal, assert_isolated

OWNER = "model.wte.weight"
NOTE = ("tied='detach': parameter 'wte.weight' (also 'lm_head.weight') is trained by block 0 and read detached "
        "by block 3 (no gradient from there)")


class TiedMLP(nn.Module):
    """The input projection's weight read again, transposed, as the output layer (float inputs, for the
    command line)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 16, bias=False)
        self.body = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3)])

    def forward(self, x):
        return F.linear(self.body(self.embed(x)), self.embed.weight.t())


def _gpt():
    torch.manual_seed(0)
    return GPT(tied=True), torch.randint(0, 50, (2, 16)), torch.randint(0, 50, (2,))


def test_a_tied_embedding_closes_every_cut_and_the_error_names_both_paths_and_the_keyword():
    model, idx, _ = _gpt()
    for tied in ({}, {"tied": "together"}):
        with pytest.raises(splitfx.PlanError) as info:
            splitfx.plan(model, idx, 4, **tied)
        message = str(info.value)
        assert "GPT has 0 legal cut points" in message
        assert ("- parameter 'wte.weight' (also 'lm_head.weight') is used by `self.wte(...)` (node wte) in module "
                "'wte' (Embedding) and again by `self.lm_head(...)` (node lm_head) in module 'lm_head' (Linear), the "
                "first and the last use of any parameter: a cut between two uses would let two losses train it, "
                'so they stay in one block (pass tied="detach", --tied detach on the command line, to cut between '
                "them") in message


def test_tied_is_checked_like_the_other_keywords():
    model, idx, _ = _gpt()
    with pytest.raises(splitfx.ArgumentError, match="unknown tied 'untie'; choose one of together, detach"):
        splitfx.plan(model, idx, 4, tied="untie")
    with pytest.raises(splitfx.ArgumentError, match="unknown tied True"):
        splitfx.convert(model, idx, 4, tied=True)


@pytest.mark.parametrize("split_points", [None, ["h.0", "h.1", "h.2"]])
def test_tied_detach_splits_a_tied_gpt_and_only_the_first_block_trains_the_embedding(split_points):
    model, idx, y = _gpt()
    sm = splitfx.convert(model, idx, 4, tied="detach", split_points=split_points)
    assert sm.num_blocks == 4 and NOTE in sm.plan.notes and f"note: {NOTE}" in sm.plan.table()
    assert "call_detached" in sm.blocks[3].code and "call_detached" not in sm.blocks[0].code
    names = {id(p): n for n, p in sm.named_parameters()}
    listed = [{names[id(p)] for p in sm.block_parameters(k)} for k in range(4)]
    assert OWNER in listed[0] and not any(OWNER in listed[k] for k in (1, 2, 3))
    assert_eval_equal(sm, model, idx)
    reached = assert_isolated(sm, idx, y)  # loss k reaches block k and head k alone
    assert [OWNER in r for r in reached] == [True, False, False, False]

    sm.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    next(iter(sm.local_losses(idx, y))).backward()
    first = model.wte.weight.grad.clone()
    sm.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    torch.stack(list(sm.local_losses(idx, y))).sum().backward()
    assert torch.equal(model.wte.weight.grad, first), "the owner's gradient comes from block 0's loss alone"

    losses = sm.train_step(idx, y, torch.optim.SGD(sm.parameters(), lr=0.1))
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))


def test_the_command_line_takes_tied(capsys):
    argv = ["plan", "test_tied_weights:TiedMLP", "--input-size", "6", "--batch", "2", "-k", "3"]
    assert main([*argv, "--tied", "detach"]) == 0
    assert "tied='detach': parameter 'embed.weight' is trained by block 0 and read detached by block 2" in \
        capsys.readouterr().out
    assert main(argv) == 2
    assert 'pass tied="detach"' in capsys.readouterr().err
