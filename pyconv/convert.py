"""pyconv.convert: swap torch layers for pyconv's, and fuse Conv2d -> BatchNorm2d -> ReLU chains."""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F

from . import nn as PN

# torch layer -> name of its pyconv replacement in pyconv.nn (used when that layer exists).
_REPLACEMENTS = {
    torch.nn.Conv2d: "Conv2d",
    torch.nn.BatchNorm2d: "BatchNorm2d",
    torch.nn.MaxPool2d: "MaxPool2d",
    torch.nn.AvgPool2d: "AvgPool2d",
}
_RELUS_FN = (F.relu, torch.relu, torch.relu_)


def _as_pyconv(layer: torch.nn.Module, cls, algo, backend):
    """The same module state under a pyconv class: parameters and buffers are the same tensors,
    so optimizers and state dicts see no difference."""
    new = copy.copy(layer)
    new.__class__ = cls
    for attr in ("_parameters", "_buffers", "_modules"):
        setattr(new, attr, OrderedDict(getattr(layer, attr)))
    new.backend = backend
    if isinstance(new, PN.Conv2d):
        new.algo = algo
    return new


def _swap_layers(module: torch.nn.Module, algo, backend):
    for name, child in module.named_children():
        cls_name = _REPLACEMENTS.get(type(child))
        cls = getattr(PN, cls_name, None) if cls_name else None
        if cls is not None:
            setattr(module, name, _as_pyconv(child, cls, algo, backend))
        else:
            _swap_layers(child, algo, backend)


def _is_relu(node, modules) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), torch.nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELUS_FN
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _fuse(model: torch.nn.Module, algo, backend) -> torch.nn.Module:
    """Conv2d -> BatchNorm2d -> ReLU chains, proven by an fx trace (each intermediate value has
    exactly one user), become one ConvBNReLU2d. Models that do not trace are returned unfused."""
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return model
    modules = dict(gm.named_modules())
    fused_any = False
    for node in list(gm.graph.nodes):
        if not _is_relu(node, modules) or len(node.args) < 1:
            continue
        bn_node = node.args[0]
        if not (isinstance(bn_node, torch.fx.Node) and bn_node.op == "call_module"
                and isinstance(modules.get(bn_node.target), torch.nn.BatchNorm2d) and len(bn_node.users) == 1):
            continue
        conv_node = bn_node.args[0]
        if not (isinstance(conv_node, torch.fx.Node) and conv_node.op == "call_module"
                and isinstance(modules.get(conv_node.target), torch.nn.Conv2d) and len(conv_node.users) == 1):
            continue
        conv, bn = modules[conv_node.target], modules[bn_node.target]
        if conv.padding_mode != "zeros" or not bn.affine or not bn.track_running_stats:
            continue
        fused = PN.ConvBNReLU2d.from_modules(conv, bn, algo=algo, backend=backend)
        target = conv_node.target + "_bn_relu"
        gm.add_submodule(target, fused)
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, (conv_node.args[0],))
        node.replace_all_uses_with(new)
        for dead in (node, bn_node, conv_node):
            gm.graph.erase_node(dead)
        fused_any = True
    if not fused_any:
        return model
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def convert(model: torch.nn.Module, *, fuse: bool = True, algo: str = "auto", backend: str = "auto"):
    """Returns `model` with every torch Conv2d, BatchNorm2d, MaxPool2d and AvgPool2d replaced by
    its pyconv layer (the same parameter and buffer tensors), and with fuse=True each
    Conv2d -> BatchNorm2d -> ReLU chain fused into a ConvBNReLU2d (a new fx GraphModule)."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    if fuse and hasattr(PN, "ConvBNReLU2d"):
        model = _fuse(model, algo, backend)
    if type(model) in _REPLACEMENTS and getattr(PN, _REPLACEMENTS[type(model)], None) is not None:
        return _as_pyconv(model, getattr(PN, _REPLACEMENTS[type(model)]), algo, backend)
    _swap_layers(model, algo, backend)
    return model
