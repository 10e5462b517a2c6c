"""One graph for both modes: reconcile the train-mode and eval-mode traces of a model.

The trace pass traces twice, in train and in eval mode, and keeps the train-mode graph where it can
serve both: a constant ``True`` in train and ``False`` in eval (``F.dropout(x, training=self.training)``)
reads its module's ``training`` flag at run time; a call that only training makes and whose result
stands in for its first argument (``if self.training: coords = augment(coords)``, sapiens2's rotary
coordinate augmentation) becomes :func:`train_only` of it, run or skipped on that flag; a branch
only training computes and only the output reads, with an output that differs by mode
(torchvision's Inception3 and GoogLeNet return their auxiliary logits beside the logits in
training, the logits alone in eval) becomes an output picked at run time by :func:`by_mode` (the
branch also runs in eval; an exporter drops it, as the flag is a constant there). Any other
difference names the innermost module where the traces differ, which the trace pass makes a leaf.

How a train-only call draws once per step is :mod:`.replay`'s.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from .names import inside
from .replay import train_only


@dataclass
class Reconciled:
    """How to make the train-mode graph valid in both modes (see :func:`reconcile`)."""

    flags: list[tuple[fx.Node, list[int]]] = field(default_factory=list)  # node, argument positions
    train_only: list[fx.Node] = field(default_factory=list)
    scopes: set[str] = field(default_factory=set)  # modules to make leaves; "" is the root
    eval_output: Any = None  # the eval trace's output in train-graph nodes, where it differs by mode


def by_mode(training: bool, train_output: Any, eval_output: Any) -> Any:
    """The model's output in its current mode: a graph whose output differs by mode returns this."""
    return train_output if training else eval_output


def _stack(node: fx.Node) -> list[str]:
    return [qualname for qualname, _ in (node.meta.get("nn_module_stack") or {}).values()]


def container_stack(node: fx.Node) -> list[str]:
    """The modules ``node`` runs inside, outermost first (a module call is not inside itself)."""
    stack = _stack(node)
    return stack[:-1] if node.op == "call_module" else stack


def _structure(node: fx.Node) -> tuple:
    target = str(node.target)
    if node.op == "get_attr" and target.startswith("_tensor_constant"):
        target = "_tensor_constant"  # numbered in creation order, which differs between traces
    return node.op, target, str(tree_flatten((node.args, node.kwargs))[1])


def _constants(node: fx.Node) -> list[str | None]:
    """The node's non-Node arguments, e.g. ``dropout_p`` or ``training`` baked from self.training."""
    leaves = tree_flatten((node.args, node.kwargs))[0]
    return [None if isinstance(v, fx.Node) else repr(v) for v in leaves]


def _signature(node: fx.Node) -> tuple:
    return *_structure(node), tuple(_constants(node))


def _owner(node: fx.Node) -> str:
    stack = container_stack(node)
    return stack[-1] if stack else ""


def _scope_signatures(graph: fx.Graph) -> dict[str, list[tuple]]:
    per_scope: dict[str, list[tuple]] = {}
    for node in graph.nodes:
        for scope in ["", *container_stack(node)]:
            per_scope.setdefault(scope, []).append(_signature(node))
    return per_scope


def _mode_dependent_scopes(train: fx.Graph, eval_: fx.Graph) -> set[str]:
    """Innermost module FQNs whose traced code differs between modes ("" is the root)."""
    a, b = _scope_signatures(train), _scope_signatures(eval_)
    differing = {s for s in a.keys() | b.keys() if a.get(s) != b.get(s)}
    return {s for s in differing if not any(o != s and inside(o, s) for o in differing)}


def _align(a: list[fx.Node], b: list[fx.Node]) -> tuple[list[tuple[fx.Node, fx.Node]], list[fx.Node], Any] | None:
    """Pair the eval trace ``b`` with the train trace ``a`` when ``a`` is ``b`` plus train-only calls
    (each a ``call_function`` whose first argument its users read in eval instead) and a train-only
    branch that only the output reads: the pairs, the train-only calls, and the eval output in train
    nodes where the outputs differ (else None); or None."""
    (*a, a_out), (*b, b_out) = a, b
    if len(a) == len(b) and all(_structure(x) == _structure(y) for x, y in zip(a, b, strict=True)):
        pairs, extra = list(zip(a, b, strict=True)), []
    else:
        matcher = difflib.SequenceMatcher(None, [_structure(n) for n in a], [_structure(n) for n in b], autojunk=False)
        pairs, extra = [], []
        for tag, i, j, k, _ in matcher.get_opcodes():
            if tag == "equal":
                pairs.extend(zip(a[i:j], b[k:k + j - i], strict=True))
            elif tag == "delete":
                extra.extend(a[i:j])
            else:
                return None
    skipped = set(extra)
    gated: list[fx.Node] = []  # train-only calls a shared node (or an unchanged output) reads through

    def in_eval(node: fx.Node, record: bool = True) -> fx.Node | None:
        while node in skipped:  # a stand-in: a call on its first argument, reading no other train-only value
            if not (node.op == "call_function" and node.args and isinstance(node.args[0], fx.Node)) or any(
                    v in skipped for v in node.all_input_nodes if v is not node.args[0]):
                return None
            if record:
                gated.append(node)
            node = node.args[0]
        return node

    train_of = {y: x for x, y in pairs}
    for x, y in pairs:
        got = [in_eval(v) if isinstance(v, fx.Node) else v for v in tree_flatten((x.args, x.kwargs))[0]]
        want = [train_of.get(v) if isinstance(v, fx.Node) else v for v in tree_flatten((y.args, y.kwargs))[0]]
        if any(isinstance(v, fx.Node) and u is not v for u, v in zip(got, want, strict=True)):
            return None
    eval_output = tree_map(lambda v: train_of.get(v) if isinstance(v, fx.Node) else v, b_out.args[0])
    seen = tree_map(lambda v: in_eval(v, record=False) if isinstance(v, fx.Node) else v, a_out.args[0])
    differs = tree_flatten(seen) != tree_flatten(eval_output)
    if not differs:
        tree_map(lambda v: in_eval(v) if isinstance(v, fx.Node) else v, a_out.args[0])
    for node in extra:  # a train-only call nothing reads (a check, a log): gated, with what it reads
        if not node.users:
            in_eval(node)
    branch = skipped - set(gated)  # computed in training for the output alone
    if any(u not in branch and u is not a_out for n in branch for u in n.users) or (branch and not differs):
        return None
    return pairs, list(dict.fromkeys(n for n in extra if n in gated)), eval_output if differs else None


def reconcile(train: fx.Graph, eval_: fx.Graph) -> Reconciled:
    """What makes the train-mode graph valid in both modes: flags to read at run time, train-only
    calls to gate, and otherwise the innermost modules whose traces differ (to make leaves)."""
    aligned = _align(list(train.nodes), list(eval_.nodes))
    if aligned is None:
        return Reconciled(scopes=_mode_dependent_scopes(train, eval_))
    pairs, extra, eval_output = aligned
    result = Reconciled(train_only=extra, eval_output=eval_output)
    for x, y in pairs:
        ca, cb = _constants(x), _constants(y)
        diff = [i for i, (u, v) in enumerate(zip(ca, cb, strict=True)) if u != v]
        if not diff:
            continue
        if all(ca[i] == "True" and cb[i] == "False" for i in diff):
            result.flags.append((x, diff))
        else:
            result.scopes.add(_owner(x))
    return result


def apply(graph: fx.Graph, fixes: Reconciled) -> None:
    """Rewrite the train-mode ``graph`` in place so it reads the training flag where ``fixes`` say."""
    for node, positions in fixes.flags:
        leaves, spec = tree_flatten((node.args, node.kwargs))
        flag = _flag(graph, node)
        for i in positions:
            leaves[i] = flag
        node.args, node.kwargs = tree_unflatten(leaves, spec)
    for node in fixes.train_only:
        node.args = (_flag(graph, node), node.name, *node.args)
        node.target = train_only(node.target)
    if fixes.eval_output is not None:
        out = graph.output_node()
        with graph.inserting_before(out):
            picked = graph.call_function(by_mode, (_flag(graph, out), out.args[0], fixes.eval_output))
        picked.meta = dict(out.meta)
        out.args = (picked,)


def _flag(graph: fx.Graph, node: fx.Node) -> fx.Node:
    """A ``get_attr`` of the ``training`` flag of the module ``node`` runs in, just before it."""
    owner = _owner(node)
    with graph.inserting_before(node):
        flag = graph.get_attr(f"{owner}.training" if owner else "training")
    flag.meta = dict(node.meta)
    return flag
