"""pyconv.nn: drop-in layers with torch.nn's constructor arguments, parameters, buffers and
state_dict keys, plus keyword-only algo= / backend=."""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F

from . import backends
from . import functional as PF
from ._errors import PyConvError
from .autotune import autotune_enabled
from .prepared import Folded, PreparedCache, fold_batch_norm

__all__ = ["Conv2d", "MaxPool2d", "AvgPool2d", "BatchNorm2d", "ConvBNReLU2d", "AdaptiveAvgPool2d", "FusedConv"]


class Conv2d(torch.nn.Conv2d):
    """torch.nn.Conv2d on pyconv's kernels. In inference (eval mode, no gradient needed) the weight
    is kept in the form the chosen kernel consumes, rebuilt whenever it changes, and later calls of
    the same input size run bound to the kernel (see FusedConv)."""

    def __init__(self, *args, algo: str = "auto", backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.algo, self.backend = algo, backend

    def forward(self, input):
        if (not self.training and self.padding_mode == "zeros" and type(input) is torch.Tensor
                and not torch.compiler.is_compiling()):  # (a traced call keeps no host-side state)
            p = self._parameters
            sources = (p.get("weight"), p.get("bias"))
            if sources[0] is not None and not _needs_grad(input, *sources):
                cache = self.__dict__.get("_kernel_form")
                if cache is None:  # (convert makes these layers without __init__)
                    cache = self.__dict__["_kernel_form"] = PreparedCache()
                conf = (self.stride, self.padding, self.dilation, self.groups, self.algo, self.backend, "none",
                        autotune_enabled())
                return PF.bound_conv2d_activation(cache, sources, conf, input, None, lambda: sources, self.stride,
                                                  self.padding, self.dilation, self.groups, "none", self.algo,
                                                  self.backend)
        return super().forward(input)

    def train(self, mode: bool = True):
        if mode and "_kernel_form" in self.__dict__:
            self._kernel_form.clear()
        return super().train(mode)

    def prepared_bytes(self) -> int:
        """Memory held by the weight's prepared form (freed by train())."""
        cache = self.__dict__.get("_kernel_form")
        return 0 if cache is None else cache.nbytes

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        return PF.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                         algo=self.algo, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", algo={self.algo!r}, backend={self.backend!r}"


class MaxPool2d(torch.nn.MaxPool2d):
    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        return PF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                             ceil_mode=self.ceil_mode, return_indices=self.return_indices, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class AvgPool2d(torch.nn.AvgPool2d):
    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        return PF.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                             self.count_include_pad, self.divisor_override, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class BatchNorm2d(torch.nn.BatchNorm2d):
    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.backend = backend

    def forward(self, input):
        # torch.nn.modules.batchnorm._BatchNorm.forward, with pyconv's batch_norm.
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            # momentum=None: cumulative moving average over the batches seen
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_running = not self.training or self.track_running_stats
        return PF.batch_norm(input, self.running_mean if use_running else None,
                             self.running_var if use_running else None, self.weight, self.bias, bn_training,
                             factor, self.eps, backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


class ConvBNReLU2d(torch.nn.Module):
    """relu(bn(conv(x))) through the fused pyconv.functional.conv_bn_relu. Holds a Conv2d `conv` and a
    BatchNorm2d `bn`, so its state dict is the two layers' (conv.weight, bn.running_mean, ...)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=False, eps=1e-5, momentum=0.1, *, algo: str = "auto", backend: str = "auto"):
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                           algo=algo, backend=backend)
        self.bn = BatchNorm2d(out_channels, eps=eps, momentum=momentum, backend=backend)
        self.algo, self.backend = algo, backend

    @classmethod
    def from_modules(cls, conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d, *, algo="auto", backend="auto"):
        """The fused layer over an existing Conv2d and BatchNorm2d (the same parameter and buffer tensors)."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"ConvBNReLU2d: padding_mode={conv.padding_mode!r} cannot be fused; expected 'zeros'")
        if not (bn.affine and bn.track_running_stats):
            raise ValueError("ConvBNReLU2d: needs a BatchNorm2d with affine=True and track_running_stats=True")
        new = cls.__new__(cls)
        torch.nn.Module.__init__(new)
        new.conv = as_pyconv(conv, Conv2d, algo, backend)
        new.bn = as_pyconv(bn, BatchNorm2d, algo, backend)
        new.algo, new.backend = algo, backend
        return new

    def forward(self, input):
        cache = self.__dict__.get("_bound")  # the training call bound to its plan (made on first use)
        if cache is None:
            cache = self.__dict__["_bound"] = PreparedCache()
        return _conv_bn_relu(self.conv, self.bn, input, bound=cache)

    def extra_repr(self):
        return f"algo={self.algo!r}, backend={self.backend!r}"


class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """Global average pooling (output_size 1 or (1, 1)) as pyconv's avg_pool2d over the whole plane;
    other output sizes are not implemented (convert leaves those layers to torch)."""

    def __init__(self, output_size=1, *, backend: str = "auto"):
        super().__init__(output_size)
        if not is_global_pool(self):
            raise NotImplementedError(f"AdaptiveAvgPool2d: output_size={output_size!r}; pyconv has global "
                                      f"average pooling (output_size=1) only")
        self.backend = backend

    def forward(self, input):
        return PF.avg_pool2d(input, tuple(input.shape[-2:]), backend=self.backend)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


def is_global_pool(layer: torch.nn.AdaptiveAvgPool2d) -> bool:
    size = layer.output_size
    return size == 1 or (isinstance(size, (tuple, list)) and tuple(size) == (1, 1))


class FusedConv(torch.nn.Module):
    """act(bn(conv(x)) [+ identity]) over a model's own Conv2d and BatchNorm2d (bn may be None: a
    Conv2d -> activation chain), which stay where they are in the model (so its state_dict keys are
    the original's): this module holds no parameters and refers to the layers without registering
    them.

    Inference (no gradient needed): batch norm is folded into the filters once and the filters are
    kept in the form the chosen kernel consumes (prepared weights, rebuilt whenever a source tensor
    changes); bias, activation and the residual add run in the convolution's epilogue op. Training,
    or eval with gradients: conv -> BN -> {ReLU, nothing} is the fused conv_bn_relu op; other chains
    (ReLU6, residual tails) run layer by layer."""

    def __init__(self, conv: Conv2d, bn, activation: str = "relu", residual: bool = False):
        super().__init__()
        from .problem import ACTIVATIONS

        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}: expected one of {ACTIVATIONS}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"FusedConv: padding_mode={conv.padding_mode!r} cannot be fused; expected 'zeros'")
        if bn is not None and not (bn.affine and bn.track_running_stats):
            raise ValueError("FusedConv: needs a BatchNorm2d with affine=True and track_running_stats=True")
        # plain attributes, not submodules: the model keeps them under their own names
        object.__setattr__(self, "conv", conv)
        object.__setattr__(self, "bn", bn)
        self.activation, self.residual = activation, residual
        self._prepared = PreparedCache()  # BN folded into the filters and the bias
        self._kernel_form = PreparedCache()  # the folded filters as the chosen kernel consumes them
        # the mode of the layers it stands for (a new module trains: fused over eval-mode layers, it
        # would run the training path and fold batch norm on every inference call)
        self.training = (conv if bn is None else bn).training

    def _folded(self):
        c, bn = self.conv, self.bn
        if bn is None:  # nothing to fold: the kernel form is built from the conv's own tensors
            return Folded(c.weight, c.bias)
        return self._prepared.get((c.weight, c.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var),
                                  (bn.eps,), lambda: fold_batch_norm(c.weight, c.bias, bn.weight, bn.bias,
                                                                     bn.running_mean, bn.running_var, bn.eps))

    def _sources(self):
        """The tensors the prepared weights come from, read from the layers' parameter and buffer
        dicts (Module.__getattr__ costs ~0.3 us a name, on every call); None where a layer keeps
        them otherwise (a parametrized weight): then every call takes the keyed path."""
        return _layer_sources(self.conv, self.bn)

    def prepared_bytes(self) -> int:
        """Memory held by the prepared weights (folded, and transformed for the kernel)."""
        return self._prepared.nbytes + self._kernel_form.nbytes

    def train(self, mode: bool = True):
        if mode:
            self._prepared.clear()
            self._kernel_form.clear()
        return super().train(mode)

    def forward(self, input, identity=None):
        if (identity is None) == self.residual:
            raise TypeError(f"FusedConv(residual={self.residual}) called with"
                            f"{'out' if identity is None else ''} an identity input")
        c, bn = self.conv, self.bn
        training = c.training if bn is None else bn.training
        if not (self.training or training) and torch.compiler.is_compiling():
            # traced (torch.compile): no prepared state or version checks on the host, the fold and
            # the fused op go into the graph
            if not _needs_grad(input, identity, c.weight, c.bias, *(() if bn is None else (bn.weight, bn.bias))):
                f = Folded(c.weight, c.bias) if bn is None else fold_batch_norm(
                    c.weight, c.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)
                return PF.conv2d_activation(input, f.weight, f.bias, identity, c.stride, c.padding, c.dilation,
                                            c.groups, self.activation, algo=c.algo, backend=c.backend)
        elif not (self.training or training):
            sources = self._sources()
            params = sources[:2 if bn is None else 4] if sources is not None else \
                (c.weight, c.bias, *(() if bn is None else (bn.weight, bn.bias)))
            if not _needs_grad(input, identity, *params):
                conf = (c.stride, c.padding, c.dilation, c.groups, c.algo, c.backend, self.activation,
                        None if bn is None else bn.eps, autotune_enabled())
                return PF.bound_conv2d_activation(self._kernel_form, sources, conf, input, identity, self._folded,
                                                  c.stride, c.padding, c.dilation, c.groups, self.activation, c.algo,
                                                  c.backend)
        if bn is None:
            y = c(input)
        elif (self.activation != "relu6" or _fuses(c.backend, input, "clipped_bn_relu")) and \
                (identity is None or _fuses(c.backend, input, "residual_bn")):
            return _conv_bn_relu(c, bn, input, activation=self.activation, residual=identity, bound=self._prepared)
        else:  # the residual tail and ReLU6: conv -> BN fused (statistics from the conv's epilogue)
            y = _conv_bn_relu(c, bn, input, activation="none", bound=self._prepared)
        return PF.unfused_tail(y, identity, self.activation)

    def extra_repr(self):
        return f"activation={self.activation!r}, residual={self.residual}"


def _layer_sources(c, bn):
    """A conv's (weight, bias) and its batch norm's (weight, bias, running_mean, running_var), read
    from the layers' parameter and buffer dicts (Module.__getattr__ costs ~0.3 us a name, on every
    call); None where a layer keeps them otherwise (a parametrized weight): then every call takes the
    keyed (or full) path."""
    try:
        cp = c._parameters
        if bn is None:
            return cp["weight"], cp["bias"]
        bp, bb = bn._parameters, bn._buffers
        return cp["weight"], cp["bias"], bp["weight"], bp["bias"], bb["running_mean"], bb["running_var"]
    except KeyError:
        return None


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _fuses(backend: str, input, capability: str) -> bool:
    """Whether the backend that runs this input fuses ReLU6 (clipped_bn_relu) or the residual add
    (residual_bn) into its batch norm (else conv -> BN is fused and torch's ops follow)."""
    try:
        return bool(getattr(backends.load(backends.resolve(backend, input.device)), capability))
    except (PyConvError, AttributeError, TypeError):  # the op itself reports a bad backend or input
        return False


def _conv_bn_relu(c: Conv2d, bn: BatchNorm2d, input, relu: bool = True, activation=None, residual=None,
                  bound: PreparedCache = None):
    """The fused conv_bn_relu op (relu=False: conv -> BN; activation: "none", "relu" or "relu6") on a
    Conv2d and BatchNorm2d, with BatchNorm2d's momentum rules. bound: the layer's cache that keeps
    its training call bound to its plan (functional.bound_conv_bn_relu)."""
    factor = bn.momentum if bn.momentum is not None else 0.0
    if bn.training:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average, as torch's BatchNorm2d
            factor = 1.0 / float(bn.num_batches_tracked)
        if bound is not None:  # (the activation resolved as conv_bn_relu does: relu counts here too)
            act = ("relu" if relu else "none") if activation is None else activation
            sources = _layer_sources(c, bn)  # (the same tensors as the attributes, read without __getattr__)
            w, b, bnw, bnb, rm, rv = sources if sources is not None else (
                c.weight, c.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
            return PF.bound_conv_bn_relu(bound, sources, input, w, b, bnw, bnb, rm, rv, c.stride, c.padding,
                                         c.dilation, c.groups, factor, bn.eps, act, c.algo, c.backend, residual)
    return PF.conv_bn_relu(input, c.weight, c.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                           c.stride, c.padding, c.dilation, c.groups, bn.training, factor, bn.eps, relu=relu,
                           algo=c.algo, backend=c.backend, activation=activation, residual=residual)


def as_pyconv(layer: torch.nn.Module, cls, algo, backend):
    """The same module state under a pyconv class: parameters and buffers are the same tensors,
    so optimizers and state dicts see no difference."""
    new = copy.copy(layer)
    new.__class__ = cls
    for attr in ("_parameters", "_buffers", "_modules"):
        setattr(new, attr, OrderedDict(getattr(layer, attr)))
    new.backend = backend
    if isinstance(new, Conv2d):
        new.algo = algo
    return new
