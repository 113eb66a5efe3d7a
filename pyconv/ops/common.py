"""Helpers shared by every op module: output allocation, op registration, and calling an op."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ..memory import new_output  # noqa: F401 (the ops' output allocation)

# name -> the plain Python implementation registered as torch.ops.pyconv.<name>
_IMPLS: Dict[str, Callable] = {}
# name -> the op's autograd formula as a torch.autograd.Function, for eager calls (see call())
_EAGER_AUTOGRAD: Dict[str, type] = {}


def custom_op(name: str):
    """@torch.library.custom_op("pyconv::<name>", mutates_args=()), keeping the implementation for call()."""
    def register(fn):
        _IMPLS[name] = fn
        return torch.library.custom_op(f"pyconv::{name}", mutates_args=())(fn)
    return register


def register_autograd(name: str, op, backward: Callable, setup_context: Callable) -> None:
    """op.register_autograd(backward, setup_context) for the dispatcher path (torch.compile, modes,
    transforms), and the same two functions as a torch.autograd.Function for eager calls that need
    the dispatcher only for autograd: one autograd node either way, without the dispatcher's and
    custom_op's Python autograd layer (~75 us a call). The Function takes the call's planned
    kernel step as one extra, last argument."""
    op.register_autograd(backward, setup_context=setup_context)
    impl = _IMPLS[name]

    # forward takes ctx itself (no separate setup_context): Function.apply then skips binding its
    # arguments with inspect.signature on every call (a few us an op); functorch transforms, which
    # need setup_context, never take this path (they need the dispatcher).
    def forward(ctx, *args):
        planned = args[-1]
        output = planned() if planned is not None else impl(*args[:-1])
        setup_context(ctx, args[:-1], output)
        ctx.plan = getattr(planned, "plan", None)  # the backward's kernel step reuses it (see Planned)
        return output

    def eager_backward(ctx, *grads):
        return tuple(backward(ctx, *grads)) + (None,)

    _EAGER_AUTOGRAD[name] = type(f"{name}_autograd", (torch.autograd.Function,), {
        "forward": staticmethod(forward), "backward": staticmethod(eager_backward)})


# What a call needs torch's dispatcher for (_dispatch_need): nothing, autograd only, or more.
_NO_DISPATCH, _AUTOGRAD_ONLY, _DISPATCH = 0, 1, 2


def _dispatch_need(args) -> int:
    """What on this call needs torch's dispatcher, in one pass over the arguments: _DISPATCH for
    torch.compile tracing, a dispatch or function mode (FakeTensorMode, a device context, a user's
    mode), a functorch transform (vmap, grad), forward-mode AD, tensor subclasses, meta tensors;
    else _AUTOGRAD_ONLY for autograd (a tensor that requires grad, grad mode on); else _NO_DISPATCH."""
    try:
        C = torch._C
        if (torch.compiler.is_compiling() or C._len_torch_dispatch_stack() > 0
                or C._is_torch_function_mode_enabled() or C._functorch.peek_interpreter_stack() is not None
                or torch.autograd.forward_ad._current_level >= 0):
            return _DISPATCH
    except AttributeError:  # a torch without these hooks: always dispatch
        return _DISPATCH
    grad = torch.is_grad_enabled()
    need = _NO_DISPATCH
    for a in args:
        if isinstance(a, torch.Tensor):
            if type(a) not in _PLAIN or not (a.is_cpu or a.is_cuda):
                return _DISPATCH
            if grad and a.requires_grad:
                need = _AUTOGRAD_ONLY
    return need


def _dispatcher_needed(args, autograd: bool = True) -> bool:
    """Whether anything on this call needs torch's dispatcher (see _dispatch_need); autograd=False:
    anything but autograd."""
    need = _dispatch_need(args)
    return need == _DISPATCH or (autograd and need == _AUTOGRAD_ONLY)


# Tensor types the kernels take as they are: nn.Parameter is a subclass that disables
# __torch_function__, so nothing about it needs the dispatcher (a layer's weights are Parameters).
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _tangents_flow_in(args) -> bool:
    """Whether forward-mode AD is carrying a tangent into this call (torch.func.jvp, or a dual tensor
    of torch.autograd.forward_ad): the ops have no forward-mode formula, and torch would pass them a
    zero or missing tangent without a word."""
    try:
        C = torch._C._functorch
        if any(i.key() == C.TransformType.Jvp for i in (C.get_interpreter_stack() or ())):
            return True
        if torch.autograd.forward_ad._current_level < 0:
            return False
    except AttributeError:  # a torch without these hooks
        return False
    unpack = torch.autograd.forward_ad.unpack_dual
    return any(isinstance(a, torch.Tensor) and unpack(a).tangent is not None for a in args)


class Planned:
    """A call's kernel step (a callable) for arguments the caller checked and planned, with the plan
    (shape, (forward, grad-input, grad-weight) algorithms, Backend instance) it ran on: the eager
    autograd Function keeps it as ctx.plan, so the backward runs its kernel step without planning
    and checking again."""
    __slots__ = ("step", "plan")

    def __init__(self, step: Callable, plan):
        self.step, self.plan = step, plan

    def __call__(self):
        return self.step()


def _direct(name: str, args, planned: Optional[Callable]):
    """The call without the dispatcher."""
    return planned() if planned is not None else _IMPLS[name](*args)


def call(name: str, *args, planned: Optional[Callable] = None):
    """torch.ops.pyconv.<name>(*args). Where the dispatcher adds nothing (no autograd, tracing, modes
    or transforms: see _dispatcher_needed), the implementation is called directly, which is the
    same code without the dispatcher's ~75 us a call (more than the kernel on small layers).
    planned: the implementation's kernel step for arguments the caller already validated and
    planned (shape, algorithm, backend), run instead of the whole implementation on that path, so
    one call checks its arguments once.
    Where autograd is the only reason for the dispatcher, the op's autograd formula runs as a
    torch.autograd.Function (register_autograd), which skips the dispatcher too.
    Forward-mode AD raises NotImplementedError rather than returning a wrong (zero) tangent."""
    need = _dispatch_need(args)
    if need == _NO_DISPATCH:
        return _direct(name, args, planned)
    eager = _EAGER_AUTOGRAD.get(name)
    if eager is not None and need == _AUTOGRAD_ONLY:
        return eager.apply(*args, planned)
    if not torch.compiler.is_compiling() and _tangents_flow_in(args):
        raise NotImplementedError(f"pyconv.{name}: forward-mode AD (torch.func.jvp, torch.autograd.forward_ad) "
                                  f"is not implemented; reverse mode (backward, torch.autograd.grad) is")
    return getattr(torch.ops.pyconv, name)(*args)
