"""pyconv.functional: mirrors torch.nn.functional; adds keyword-only algo= and backend=.
Accepts torch tensors (autograd works), numpy arrays (returns numpy) and cupy arrays (returns cupy)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from . import _args, autotune, backends
from ._arrays import contiguous_nchw, from_torch, result_kind, to_torch
from .problem import ACTIVATIONS, pass_algos
from .ops.common import _AUTOGRAD_ONLY, _DISPATCH, _PLAIN, Planned, _dispatch_need, _dispatcher_needed, call, new_output
from .ops.conv_bn_relu import TrainStep, check_conv_bn_relu, run_conv_bn_relu
from .ops.conv import check_residual, run_conv2d, run_conv2d_activation
from .ops.pool import run_avg_pool2d, run_max_pool2d
from .prepared import PreparedCache, versions_of

__all__ = ["conv2d", "conv_bn_relu", "conv2d_activation", "max_pool2d", "avg_pool2d", "batch_norm", "prepare",
           "PreparedConv"]


# Checked plans of plain-tensor convolution calls: everything _ConvCall derives from the arguments
# (parameters, shape, backend, algorithm), keyed by what it depends on (sizes, dtypes, devices, the
# arguments, whether gradients are taken; heuristic mode only). A layer's later calls skip the checks;
# values never enter the key, so weights that change every step keep their plan.
_PLANS: dict = {}
_PLANS_MAX = 1024
# Keys of conv_bn_relu calls whose batch-norm, activation and residual arguments passed the checks.
_BN_CHECKED: set = set()


def _plan_of(t):
    return None if t is None else (t.shape, t.dtype, t.device)


class _ConvCall:
    """The normalized arguments of one convolution call (conv2d, conv_bn_relu)."""

    def __init__(self, input, weight, bias, stride, padding, dilation, groups, algo, backend, more_params=(),
                 prepared=False):
        grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                                for t in (input, weight, bias) + tuple(more_params))
        key = None
        if (type(input) in _PLAIN and type(weight) in _PLAIN and (bias is None or type(bias) in _PLAIN)
                and not autotune.autotune_enabled()):  # measured choices depend on more (threads)
            key = (_plan_of(input), _plan_of(weight), _plan_of(bias), _freeze(stride), _freeze(padding),
                   _freeze(dilation), groups, algo, backend, grad, prepared)
            plan = _PLANS.get(key)
            if plan is not None:
                self.w, self.b, self.kind = weight, bias, "torch"
                self.params, self.batched, self.shape, self.backend, self.algo = plan
                self.x = contiguous_nchw(input if self.batched else input.unsqueeze(0))
                return
        x, kx = to_torch(input, "input")
        self.w, kw = to_torch(weight, "weight")
        self.b, kb = to_torch(bias, "bias")
        _args.check_float_tensor(x, "input", (3, 4))
        _args.check_float_tensor(self.w, "weight", (4,))
        self.params = _args.conv2d_params(tuple(self.w.shape[2:]), stride, padding, dilation, groups)
        self.batched = x.dim() == 4
        x = x if self.batched else x.unsqueeze(0)
        self.shape = _args.conv2d_shape(x, self.w, self.b, self.params)
        self.backend = backends.resolve(backend, x.device)
        self.algo = autotune.resolve_conv_algo(algo, self.shape, self.backend, dtype=x.dtype, grad=grad,
                                               prepared=prepared)
        self.x = contiguous_nchw(x)
        self.kind = result_kind(kx, kw, kb)
        if key is not None:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            _PLANS[key] = (self.params, self.batched, self.shape, self.backend, self.algo)

    def op_args(self):
        p = self.params
        return list(p.stride), list(p.padding), list(p.dilation), p.groups

    def result(self, y):
        return from_torch(y if self.batched else y.squeeze(0), self.kind)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto", backend="auto"):
    """torch.nn.functional.conv2d. weight may be a PreparedConv (pyconv.prepare), which carries its
    own bias, stride, padding, dilation, groups, algo and backend: leave those at their defaults."""
    if isinstance(weight, PreparedConv):
        if bias is not None or (stride, padding, dilation, groups, algo, backend) != (1, 0, 1, 1, "auto", "auto"):
            raise _args.PyConvError("conv2d: weight is a PreparedConv, which carries its own bias, stride, padding, "
                                    "dilation, groups, algo and backend; pass none of them")
        return weight(input)
    c = _ConvCall(input, weight, bias, stride, padding, dilation, groups, algo, backend)
    be = backends.load(c.backend)
    return c.result(call("conv2d", c.x, c.w, c.b, *c.op_args(), c.algo, c.backend,
                         planned=Planned(lambda: run_conv2d(c.x, c.w, c.b, c.shape, c.algo, be),
                                         (c.shape, pass_algos(c.algo), be))))


def conv2d_activation(input, weight, bias, residual, stride=1, padding=0, dilation=1, groups=1,
                      activation="relu", *, algo="auto", backend="auto", prepared_cache=None):
    """activation(conv2d(input, weight, bias) [+ residual]) in one op, activation "none", "relu" or
    "relu6": the inference epilogue of a fused conv -> BN (folded into weight and bias) chain. It has
    no gradient: call it where none is needed (pyconv.nn.FusedConv does).

    prepared_cache: a pyconv.prepared.PreparedCache owned by the caller for this weight; the weight
    is then kept in the form the chosen kernel consumes (Winograd's transformed filters, im2col's
    packed GEMM panels), rebuilt when the weight, the algorithm or its tile changes, and the checked
    call is planned once (later calls with the same sizes and arguments skip the checks)."""
    return _conv2d_activation(input, weight, bias, residual, stride, padding, dilation, groups, activation, algo,
                              backend, prepared_cache)


def _conv2d_activation(input, weight, bias, residual, stride, padding, dilation, groups, activation, algo, backend,
                       prepared_cache, bind_as=None):
    """conv2d_activation; bind_as: (sources, versions, conf) of a layer's call (see BoundCall), kept
    as prepared_cache.fast where the call runs its bound kernel."""
    if prepared_cache is not None:
        fast = _planned_activation_call(input, weight, bias, residual, stride, padding, dilation, groups, activation,
                                        algo, backend, prepared_cache, bind_as)
        if fast is not None:
            return fast
    c = _ConvCall(input, weight, bias, stride, padding, dilation, groups, algo, backend,
                  prepared=prepared_cache is not None)
    r, _ = to_torch(residual, "residual")
    if r is not None:
        _args.check_float_tensor(r, "residual", (4,) if c.batched else (3,))
        r = r if c.batched else r.unsqueeze(0)
        check_residual(r, c.shape, c.x)
    be = backends.load(c.backend)
    fwd = pass_algos(c.algo)[0]  # no gradient: only a plan's forward runs

    def planned():
        prepared = None if prepared_cache is None else _kernel_form(prepared_cache, c.w, c.shape, fwd, c.backend)
        return run_conv2d_activation(c.x, c.w, c.b, r, c.shape, activation, fwd, be, prepared)
    if prepared_cache is not None and c.batched and c.kind == "torch":
        prepared_cache.plan = (_plan_key(input, weight, bias, stride, padding, dilation, groups, activation, algo,
                                         backend), c.shape, fwd, c.backend)
    return c.result(call("conv2d_activation", c.x, c.w, c.b, r, *c.op_args(), activation, c.algo, c.backend,
                         planned=planned))


class PreparedConv:
    """A convolution's weight and bias kept, for repeated inference calls, in the form the chosen
    kernel consumes (Winograd's transformed filters, im2col's packed GEMM panels), with the call's
    checks and algorithm choice planned once per input size. Made by pyconv.prepare(weight, bias,
    stride, padding, dilation, groups, *, algo, backend); call it, or pass it to PF.conv2d as the
    weight.

    The prepared form is built on the first call that needs no gradient and rebuilt whenever the
    weight changes (in place: its version counter; replaced: assign .weight); calls that need
    gradients (input or weight requiring grad under grad mode) run the ordinary differentiable
    conv2d on .weight and .bias. nbytes is the memory the prepared form holds; clear() frees it."""

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto",
                 backend="auto"):
        for name, t in (("weight", weight), ("bias", bias)):
            if t is not None and not isinstance(t, torch.Tensor):
                raise TypeError(f"prepare: {name} must be a torch.Tensor, got {type(t).__name__}")
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.algo, self.backend = algo, backend
        self._cache = PreparedCache()

    def __call__(self, input, residual=None, activation: str = "none"):
        """activation(conv2d(input, weight, bias) [+ residual]), activation "none", "relu" or "relu6"."""
        if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                           for t in (input, self.weight, self.bias, residual)):
            if activation not in ACTIVATIONS:
                raise _args.PyConvError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
            y = conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                       algo=self.algo, backend=self.backend)
            return unfused_tail(y, residual, activation)
        if torch.compiler.is_compiling():  # traced: the op goes into the graph, no host-side state
            return conv2d_activation(input, self.weight, self.bias, residual, self.stride, self.padding,
                                     self.dilation, self.groups, activation, algo=self.algo, backend=self.backend)
        sources = (self.weight, self.bias)
        conf = (self.stride, self.padding, self.dilation, self.groups, self.algo, self.backend, activation,
                autotune.autotune_enabled())
        return bound_conv2d_activation(self._cache, sources, conf, input, residual, lambda: sources, self.stride,
                                       self.padding, self.dilation, self.groups, activation, self.algo, self.backend)

    @property
    def nbytes(self) -> int:
        return self._cache.nbytes

    def clear(self) -> None:
        self._cache.clear()

    def __repr__(self) -> str:
        return (f"PreparedConv(weight={tuple(self.weight.shape)}, bias={self.bias is not None}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, algo={self.algo!r}, "
                f"backend={self.backend!r}, nbytes={self.nbytes})")


def unfused_tail(y, residual, activation: str):
    """activation(y [+ residual]) with torch's differentiable ops: the tail of a fused layer where
    gradients are taken. In place only on the sum, a new tensor (y may be saved for a backward)."""
    fresh = residual is not None
    if fresh:
        y = y + residual
    if activation == "relu":
        return torch.relu_(y) if fresh else torch.relu(y)
    if activation == "relu6":
        return torch.nn.functional.relu6(y, inplace=fresh)
    return y


def prepare(weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *, algo="auto", backend="auto"):
    """A PreparedConv: conv2d's weight, bias and arguments bound once, the weight kept in its kernel's
    form for inference calls (see PreparedConv)."""
    return PreparedConv(weight, bias, stride, padding, dilation, groups, algo=algo, backend=backend)


def _freeze(v):
    return tuple(v) if isinstance(v, (list, tuple)) else v


def _plan_key(input, weight, bias, stride, padding, dilation, groups, activation, algo, backend):
    """Everything conv2d_activation's checks and 'auto' depend on, for a torch tensor input."""
    return (tuple(input.shape), input.dtype, input.device, id(weight), tuple(weight.shape), weight.dtype,
            None if bias is None else id(bias), _freeze(stride), _freeze(padding), _freeze(dilation), groups,
            activation, algo, backend, autotune.autotune_enabled())


def _planned_activation_call(input, weight, bias, residual, stride, padding, dilation, groups, activation, algo,
                             backend, cache, bind_as=None):
    """conv2d_activation on a call the cache has planned already (same sizes, weights and arguments as
    the call that checked them), straight to the kernels: a converted model's layer in inference pays
    the checks once, not per call. None where the full path must run (first call, anything changed,
    the dispatcher needed, non-torch inputs)."""
    plan = cache.plan
    if plan is None or type(input) is not torch.Tensor or plan[0] != _plan_key(
            input, weight, bias, stride, padding, dilation, groups, activation, algo, backend):
        return None
    _, shape, algo_run, be_name = plan
    out = (shape.N, shape.K, shape.P, shape.Q)
    if residual is not None and (type(residual) is not torch.Tensor or tuple(residual.shape) != out
                                 or residual.dtype != input.dtype or residual.device != input.device):
        return None
    if _dispatcher_needed((input, weight, bias, residual)):
        return None
    prepared = _kernel_form(cache, weight, shape, algo_run, be_name)
    bound = cache.bound
    # The kernel bound to this plan, weight, bias and prepared form (each compared by identity: the
    # binding holds them, so none of their ids can be reused while it lives).
    if bound is None or bound[0] is not plan or bound[1] is not weight or bound[2] is not bias \
            or bound[3] is not prepared:
        fn = backends.load(be_name).bind_conv2d_activation(weight, bias, shape, algo_run, activation, prepared)
        cache.bound = bound = (plan, weight, bias, prepared, fn)
    if bind_as is not None and bind_as[1] is not None:
        # the kernel this call runs was bound to its own plan, weight, bias and prepared form; the
        # caller took its sources' versions before deriving the weight from them
        cache.fast = BoundCall(*bind_as, input.shape, input.dtype, input.device, residual is not None, out, bound[4])
    y = new_output(out, input)
    bound[4](contiguous_nchw(input), None if residual is None else residual.contiguous(), y)
    return y


class BoundCall(NamedTuple):
    """A layer's planned conv2d_activation call bound to its kernel (FusedConv, PreparedConv in
    inference): later calls that bring the same sources (identity, version counter, data pointer),
    the same arguments (conf) and an input of the same size, dtype and device go straight to the
    kernel, without re-deriving the prepared weights and the plan (~15 us less a call)."""
    sources: tuple  # the tensors the prepared weights come from (a layer's parameters and buffers)
    versions: tuple  # prepared.versions_of(sources) when bound
    conf: tuple  # everything else the caller's result depends on (its arguments, autotune mode)
    in_shape: torch.Size
    dtype: torch.dtype
    device: torch.device
    residual: bool
    out: tuple
    run: object  # run(x, residual, y): the backend's bound kernel


def bound_conv2d_activation(cache, sources, conf: tuple, input, residual, weights, stride, padding, dilation, groups,
                            activation, algo, backend):
    """A layer's inference call (FusedConv, Conv2d, PreparedConv: no gradient needed, not traced):
    through its bound kernel (cache.fast) where nothing it was bound to has changed, else
    conv2d_activation on weights() -> (weight, bias), the form prepared from sources, bound for the
    next call. sources None (a layer that keeps them outside its parameter dicts): the full call,
    never bound."""
    if sources is not None:
        y = _run_bound_call(cache, sources, conf, input, residual)
        if y is not None:
            return y
    bind_as = None if sources is None else (sources, versions_of(sources), conf)  # before weights() reads them
    weight, bias = weights()
    return _conv2d_activation(input, weight, bias, residual, stride, padding, dilation, groups, activation, algo,
                              backend, cache, bind_as)


def _same_call(rec, sources, conf, input, residual, out) -> bool:
    """Whether a call matches what rec (a bound call: in_shape, dtype, device, residual, conf,
    sources) was bound for: a plain input of the same size, dtype and device, the same arguments,
    the same source tensors (objects), and a residual present as before, plain, of the output's size
    `out` and the input's dtype and device."""
    if (type(input) is not torch.Tensor or input.shape != rec.in_shape or input.dtype != rec.dtype
            or input.device != rec.device or (residual is not None) != rec.residual or conf != rec.conf):
        return False
    for a, b in zip(sources, rec.sources):
        if a is not b:
            return False
    return residual is None or (type(residual) is torch.Tensor and tuple(residual.shape) == tuple(out)
                                and residual.dtype == rec.dtype and residual.device == rec.device)


def _run_bound_call(cache, sources: tuple, conf: tuple, input, residual):
    """The call through cache.fast where nothing it was bound to has changed, else None (the caller
    takes the full path). The caller has checked that no gradient is needed from its sources."""
    rec = cache.fast
    if rec is None or not _same_call(rec, sources, conf, input, residual, rec.out):
        return None
    if versions_of(sources) != rec.versions:
        return None
    if _dispatcher_needed((input, residual)):
        return None
    y = new_output(rec.out, input)
    rec.run(contiguous_nchw(input), None if residual is None else residual.contiguous(), y)
    return y


def _kernel_form(cache, weight, shape, algo: str, backend: str):
    """The weight as the backend's kernel for algo consumes it, from the cache (rebuilt when the
    weight, the algorithm or its Winograd tile changes)."""
    be = backends.load(backend)
    form = be.prepared_form(shape, algo, weight.dtype)
    return cache.get((weight,), (backend, algo, form), lambda: be.prepare_conv_weight(weight, shape, algo))


# ------------------------------------------------------------------- pooling and batch norm ---

def _pool_input(input):
    x, kind = to_torch(input, "input")
    _args.check_float_tensor(x, "input", (3, 4))
    batched = x.dim() == 4
    return (x if batched else x.unsqueeze(0)), kind, batched


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False, *,
               backend="auto"):
    x, kind, batched = _pool_input(input)
    s = _args.pool2d_shape(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    be = backends.resolve(backend, x.device)
    x, mod = contiguous_nchw(x), backends.load(be)
    args = (x, [s.kernel_h, s.kernel_w], [s.stride_h, s.stride_w], [s.pad_h, s.pad_w], [s.dil_h, s.dil_w],
            bool(ceil_mode), be)
    if return_indices or (torch.is_grad_enabled() and x.requires_grad):
        y, idx = call("max_pool2d", *args, planned=lambda: run_max_pool2d(x, s, mod, True))
    else:
        y, idx = call("max_pool2d_values", *args, planned=lambda: run_max_pool2d(x, s, mod, False)), None
    if not batched:
        y, idx = y.squeeze(0), (None if idx is None else idx.squeeze(0))
    if return_indices:
        return from_torch(y, kind), from_torch(idx, kind)
    return from_torch(y, kind)


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None, *, backend="auto"):
    x, kind, batched = _pool_input(input)
    s = _args.pool2d_shape(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    div = _args.divisor(divisor_override)
    be = backends.resolve(backend, x.device)
    x, mod = contiguous_nchw(x), backends.load(be)
    y = call("avg_pool2d", x, [s.kernel_h, s.kernel_w], [s.stride_h, s.stride_w], [s.pad_h, s.pad_w],
             bool(ceil_mode), bool(count_include_pad), div, be,
             planned=lambda: run_avg_pool2d(x, s, mod, count_include_pad, div))
    return from_torch(y if batched else y.squeeze(0), kind)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               *, backend="auto"):
    if momentum is None:  # as torch.nn.functional.batch_norm; the BatchNorm2d layer resolves None itself
        raise TypeError("batch_norm(): argument 'momentum' must be float, not NoneType")
    x, kind = to_torch(input, "input")
    rm, _ = to_torch(running_mean, "running_mean")
    rv, _ = to_torch(running_var, "running_var")
    w, _ = to_torch(weight, "weight")
    b, _ = to_torch(bias, "bias")
    if isinstance(x, torch.Tensor) and x.dim() == 1 and x.numel() == 0:
        # torch returns an empty result for a 1-D empty input (no channel dimension to check the
        # statistics against), and leaves the running statistics alone
        _args.check_float_tensor(x, "input")
        return from_torch(x.clone(), kind)
    _args.batch_norm_shape(x, rm, rv, w, b, bool(training), momentum, eps)
    be = backends.resolve(backend, x.device)
    y, _, _, new_rm, new_rv = call("batch_norm", contiguous_nchw(x), w, b, rm, rv, bool(training),
                                   float(momentum), float(eps), be)
    if training:  # running statistics are updated in place, as torch does
        with torch.no_grad():
            if rm is not None:
                rm.copy_(new_rm)
            if rv is not None:
                rv.copy_(new_rv)
    return from_torch(y, kind)


def conv_bn_relu(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride=1, padding=0,
                 dilation=1, groups=1, training=True, momentum=0.1, eps=1e-5, *, relu=True, algo="auto",
                 backend="auto", activation=None, residual=None):
    """relu(batch_norm(conv2d(input, weight, bias), running_mean, running_var, bn_weight, bn_bias,
    training, momentum, eps)) as one fused op (relu=False: without the ReLU; activation="relu6":
    clipped at 6, on backends with Backend.clipped_bn_relu; residual: added before the activation,
    a residual block's tail, on backends with Backend.residual_bn); in training the running
    statistics are updated in place as torch does. momentum=None (cumulative average) needs the batch count: use
    pyconv.nn.ConvBNReLU2d, which keeps num_batches_tracked as torch's BatchNorm2d does."""
    if momentum is None:
        raise TypeError("conv_bn_relu(): argument 'momentum' must be float, not NoneType "
                        "(pyconv.nn.ConvBNReLU2d handles momentum=None)")
    return _conv_bn_relu(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride, padding,
                         dilation, groups, training, momentum, eps, relu, algo, backend, activation, residual)[0]


def _conv_bn_relu(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride, padding, dilation,
                  groups, training, momentum, eps, relu, algo, backend, activation, residual):
    """conv_bn_relu: (its result, (the checked call, (forward, grad-input, grad-weight) algorithms,
    Backend instance, activation))."""
    c = _ConvCall(input, weight, bias, stride, padding, dilation, groups, algo, backend,
                  more_params=(bn_weight, bn_bias))
    bn = {name: to_torch(t, name)[0] for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias),
                                                     ("running_mean", running_mean), ("running_var", running_var))}
    for name, t in bn.items():
        if t is None:
            raise _args.PyConvError(f"{name}: required by conv_bn_relu, got None")
    rm, rv, bnw, bnb = bn["running_mean"], bn["running_var"], bn["bn_weight"], bn["bn_bias"]
    r, _ = to_torch(residual, "residual")
    if r is not None and not c.batched:
        r = r.unsqueeze(0)
    act = ("relu" if relu else "none") if activation is None else activation
    be = backends.load(c.backend)
    # the batch-norm, activation and residual checks, once per set of sizes and arguments (as _PLANS)
    key = (c.shape, _plan_of(c.x), _plan_of(bnw), _plan_of(bnb), _plan_of(rm), _plan_of(rv), _plan_of(r),
           bool(training), type(momentum), eps, act, c.backend, be.residual_bn, be.clipped_bn_relu)
    if key in _BN_CHECKED:
        rc = None if r is None else r.contiguous()
    else:
        rc = check_conv_bn_relu(c.x, c.shape, be, bnw, bnb, rm, rv, bool(training), momentum, eps, act, r)
        if len(_BN_CHECKED) >= _PLANS_MAX:
            _BN_CHECKED.clear()
        _BN_CHECKED.add(key)
    algos = pass_algos(c.algo)
    planned = Planned(lambda: run_conv_bn_relu(c.x, c.w, c.b, bnw, bnb, rm, rv, bool(training), momentum, eps, act, rc,
                                               c.shape, algos[0], be),
                      (c.shape, algos, be))
    z, _, _, _, new_rm, new_rv = call(
        "conv_bn_relu", c.x, c.w, c.b, bnw, bnb, rm, rv, *c.op_args(), bool(training), float(momentum),
        float(eps), act, c.algo, c.backend, r, planned=planned)
    if training and c.shape.N > 0:  # running statistics are updated in place, as torch does
        with torch.no_grad():
            rm.copy_(new_rm)
            rv.copy_(new_rv)
    return c.result(z), (c, algos, be, act)


class _BoundTrain:
    """A layer's training call bound to its checked plan (bound_conv_bn_relu), and what it was
    checked for: the input's size, dtype and device, the layer's tensors (the same objects, with the
    same sizes, dtypes and devices), its arguments, the residual's presence, grad mode."""
    __slots__ = ("step", "in_shape", "dtype", "device", "sources", "metas", "conf", "residual", "grad", "eps")

    def __init__(self, step, input, sources, conf, residual, grad, eps):
        self.step, self.sources, self.conf, self.grad, self.eps = step, sources, conf, grad, float(eps)
        self.in_shape, self.dtype, self.device = input.shape, input.dtype, input.device
        self.metas = _metas(sources)
        self.residual = residual is not None


def _metas(sources):
    return tuple(None if t is None else (t.shape, t.dtype, t.device) for t in sources)


def bound_conv_bn_relu(cache, sources, input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride,
                       padding, dilation, groups, momentum, eps, activation, algo, backend, residual):
    """A layer's conv_bn_relu call in training (batch statistics): through its bound step
    (cache.train, ops.conv_bn_relu.TrainStep) where nothing it was bound to has changed, else the
    full conv_bn_relu, whose checked plan is bound for the next call. sources: the layer's (weight,
    bias, bn_weight, bn_bias, running_mean, running_var) as its modules hold them (None: never bound)."""
    if torch.compiler.is_compiling():  # traced: the op goes into the graph, no host-side state
        return conv_bn_relu(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride, padding,
                            dilation, groups, True, momentum, eps, activation=activation, algo=algo, backend=backend,
                            residual=residual)
    conf = (stride, padding, dilation, groups, algo, backend, activation, eps)
    rec = cache.train
    if rec is not None and sources is not None:
        z = _run_bound_train(rec, sources, conf, input, residual, momentum)
        if z is not None:
            return z
    z, (c, algos, be, act) = _conv_bn_relu(input, weight, bias, bn_weight, bn_bias, running_mean, running_var, stride,
                                           padding, dilation, groups, True, momentum, eps, True, algo, backend,
                                           activation, residual)
    need = _dispatch_need((input, residual) + tuple(sources or ()))
    if (sources is not None and c.kind == "torch" and c.batched and c.shape.N > 0 and type(input) is torch.Tensor
            and need != _DISPATCH and not autotune.autotune_enabled()
            and all(t is None or type(t) in _PLAIN for t in sources + (residual,))
            and sources[4].is_contiguous() and sources[5].is_contiguous()):
        cache.train = _BoundTrain(TrainStep(c.shape, algos, be, act), input, sources, conf, residual,
                                  need == _AUTOGRAD_ONLY, eps)
    return z


def _run_bound_train(rec, sources, conf, input, residual, momentum):
    """The call through rec where nothing it was bound to has changed, else None."""
    if not _same_call(rec, sources, conf, input, residual, rec.step.out) or _metas(sources) != rec.metas:
        return None
    w, b, bnw, bnb, rm, rv = sources
    if residual is not None:
        residual = residual.contiguous()
    need = _dispatch_need((input, residual, w, b, bnw, bnb))
    if need == _DISPATCH or (need == _AUTOGRAD_ONLY) != rec.grad or not (rm.is_contiguous() and rv.is_contiguous()):
        return None
    return rec.step.run(contiguous_nchw(input), w.contiguous(), None if b is None else b.contiguous(),
                        bnw.contiguous(), bnb.contiguous(), rm, rv, float(momentum), rec.eps, residual,
                        need == _AUTOGRAD_ONLY)
