"""pyconv.convert: swap torch layers for pyconv's, then fuse the chains an fx trace proves:
Conv2d -> BatchNorm2d -> {ReLU, ReLU6, nothing}, Conv2d -> {ReLU, ReLU6} (VGG), and the residual
tail of ResNet / MobileNetV2 blocks, act(BatchNorm2d(Conv2d(y)) + identity). The fused op refers to the model's own layers,
which stay where they were, so the converted model's state_dict keys are the original's."""
from __future__ import annotations

import operator
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import nn as PN

# torch layer -> its pyconv replacement (AdaptiveAvgPool2d: global average pooling only)
_REPLACEMENTS = {
    torch.nn.Conv2d: PN.Conv2d,
    torch.nn.BatchNorm2d: PN.BatchNorm2d,
    torch.nn.MaxPool2d: PN.MaxPool2d,
    torch.nn.AvgPool2d: PN.AvgPool2d,
    torch.nn.AdaptiveAvgPool2d: PN.AdaptiveAvgPool2d,
}
_PYCONV_LAYERS = tuple(_REPLACEMENTS.values()) + (PN.ConvBNReLU2d, PN.FusedConv)


def _replacement(layer: torch.nn.Module):
    cls = _REPLACEMENTS.get(type(layer))
    if cls is PN.AdaptiveAvgPool2d and not PN.is_global_pool(layer):
        return None
    return cls


def _swap_layers(module: torch.nn.Module, algo, backend):
    for name, child in module.named_children():
        cls = _replacement(child)
        if cls is not None:
            setattr(module, name, PN.as_pyconv(child, cls, algo, backend))
        else:
            _swap_layers(child, algo, backend)


# ------------------------------------------------------------------------------------ fusion ---

def _activation(node, modules):
    """'relu' / 'relu6' when the fx node applies that activation to its first argument, else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, torch.nn.ReLU6):
            return "relu6"
        if isinstance(m, torch.nn.ReLU):
            return "relu"
        if isinstance(m, torch.nn.Hardtanh) and (m.min_val, m.max_val) == (0.0, 6.0):
            return "relu6"
    elif node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_):
            return "relu"
        if node.target is F.relu6:
            return "relu6"
    elif node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def _is_add(node) -> bool:
    return ((node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add))
            or (node.op == "call_method" and node.target in ("add", "add_"))) \
        and len(node.args) == 2 and not node.kwargs


def _module_node(node, modules, cls, single_user=True):
    """node when it calls a module of class cls on one positional argument (read by one user only)."""
    import torch.fx

    if (isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(modules.get(node.target), cls)
            and (len(node.users) == 1 or not single_user) and len(node.args) == 1 and not node.kwargs):
        return node
    return None


def _conv_bn(node, modules):
    """(conv node, bn node) when node is BatchNorm2d(Conv2d(y)) with nothing else reading the conv.
    (bn's own single user is checked where its user joins the chain.)"""
    bn_node = _module_node(node, modules, torch.nn.BatchNorm2d, single_user=False)
    conv_node = bn_node is not None and _module_node(bn_node.args[0], modules, torch.nn.Conv2d)
    if not conv_node:
        return None
    conv, bn = modules[conv_node.target], modules[bn_node.target]
    if conv.padding_mode != "zeros" or not (bn.affine and bn.track_running_stats):
        return None
    return conv_node, bn_node


class _Chain(NamedTuple):
    nodes: list  # the chain's nodes, last first (the order they can be erased in), conv last
    conv: object  # the Conv2d and BatchNorm2d nodes (bn None: conv -> activation)
    bn: object
    activation: str
    identity: object  # the residual input's node, or None


def _chains(gm, modules):
    """Each fusable chain, the residual tails first so their conv -> BN is not taken alone."""
    out, taken = [], set()

    def add(head, pair, act, identity):
        # pair: (conv node, bn node or None); the node before the head must be read by the head only
        if not pair:
            return
        conv_node, bn_node = pair
        end = bn_node if bn_node is not None else conv_node
        if end in taken or (head and len(end.users) != 1):
            return
        taken.add(end)
        out.append(_Chain(head + [n for n in (bn_node, conv_node) if n is not None], conv_node, bn_node, act,
                          identity))

    for node in gm.graph.nodes:  # act(bn(conv(y)) + identity) and bn(conv(y)) + identity
        if not _is_add(node):
            continue
        users = list(node.users)
        act = _activation(users[0], modules) if len(users) == 1 else None
        head = [users[0], node] if act else [node]
        for mine, other in ((0, 1), (1, 0)):
            pair = _conv_bn(node.args[mine], modules)
            if pair and isinstance(node.args[other], torch.fx.Node):
                add(head, pair, act or "none", node.args[other])
                break
    for node in gm.graph.nodes:  # act(bn(conv(y))) and act(conv(y))
        act = _activation(node, modules)
        if act and node.args:
            pair = _conv_bn(node.args[0], modules)
            if pair is None:
                conv_node = _module_node(node.args[0], modules, torch.nn.Conv2d)
                if conv_node and modules[conv_node.target].padding_mode == "zeros":
                    pair = (conv_node, None)
            add([node], pair, act, None)
    for node in gm.graph.nodes:  # bn(conv(y))
        pair = _conv_bn(node, modules)
        if pair:
            add([], pair, "none", None)
    return out


def _tracer():
    """An fx tracer that keeps pyconv's layers as leaves (they are not in torch.nn's namespace)."""
    import torch.fx

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, _PYCONV_LAYERS) or super().is_leaf_module(m, qualname)
    return Tracer()


def _fuse(model: torch.nn.Module) -> torch.nn.Module:
    """The chains an fx trace proves (each intermediate value read once) become FusedConv calls.
    Models that do not trace are returned unfused."""
    import torch.fx

    try:
        graph = _tracer().trace(model)
    except Exception:
        return model
    gm = torch.fx.GraphModule(model, graph, model.__class__.__name__)
    modules = dict(gm.named_modules())
    chains = _chains(gm, modules)
    if not chains:
        return model
    replaced = {}  # a chain's last node -> its fused node (an identity may be an earlier chain's end)
    for c in chains:
        bn = None if c.bn is None else modules[c.bn.target]
        fused = PN.FusedConv(modules[c.conv.target], bn, c.activation, c.identity is not None)
        target = f"{c.conv.target.replace('.', '_')}_fused"
        gm.add_submodule(target, fused)
        args = (c.conv.args[0],) if c.identity is None else (c.conv.args[0], replaced.get(c.identity, c.identity))
        with gm.graph.inserting_after(c.nodes[0]):
            new = gm.graph.call_module(target, args)
        c.nodes[0].replace_all_uses_with(new)
        replaced[c.nodes[0]] = new
        for node in c.nodes:
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    # GraphModule builds new containers for the submodule paths (new modules train): each takes the
    # mode of the module it stands for, so a model converted in eval mode infers on the eval path
    originals = dict(model.named_modules())
    for name, m in gm.named_modules():
        if name in originals and m is not originals[name]:
            m.training = originals[name].training
    return gm


def convert(model: torch.nn.Module, *, fuse: bool = True, algo: str = "auto", backend: str = "auto"):
    """Returns `model` with every torch Conv2d, BatchNorm2d, MaxPool2d, AvgPool2d and global
    AdaptiveAvgPool2d replaced by its pyconv layer (the same parameter and buffer tensors) and, with
    fuse=True, the chains an fx trace proves fused (a new fx GraphModule holding the same layers
    under the same names, so state_dict keys are unchanged)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    cls = _replacement(model)
    if cls is not None:
        return PN.as_pyconv(model, cls, algo, backend)
    _swap_layers(model, algo, backend)
    return _fuse(model) if fuse else model
