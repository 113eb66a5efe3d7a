"""The backend contract, written once: every backend is an instance of a Backend subclass, in one
registry (pyconv.backends.REGISTRY).

A backend is its kernel table (the abstract methods below: raw contiguous tensors of the right
sizes and a problem shape from pyconv.problem in, results written into the given outputs), a name,
the device its data lives on, the convolution algorithms it implements, and can_run, which says
why it cannot run a problem (None when it can). Capability lives here, with the implementation:
algo='auto', the error messages and the tests all ask can_run (as oneDNN's implementation list and
CUTLASS's can_implement do). Arguments reach the table already validated (pyconv._args); the
kernels do not re-validate them, though native code still guards memory at its binding.
"""
from __future__ import annotations

import abc
from typing import Optional, Tuple

import torch

from .. import problem
from ..memory import new_output


def conv_bn_train_grad_sizes(shape) -> tuple:
    """The sizes of a bound training step's six gradients, in bind_conv_bn_train's order: input,
    weight, conv bias, batch-norm weight and bias, residual."""
    out = (shape.N, shape.K, shape.P, shape.Q)
    return ((shape.N, shape.C, shape.H, shape.W), (shape.K, shape.C // shape.G, shape.R, shape.S), (shape.K,),
            (shape.K,), (shape.K,), out)


class Backend(abc.ABC):
    name: str
    device: str  # "cpu" or "cuda": where the data it takes lives
    conv_algos: Tuple[str, ...]  # the concrete algorithms of problem.CONV_ALGOS it implements
    # max_pool2d_forward accepts indices=None (values only, for inference)
    max_pool_indices_optional: bool = False
    # batch_norm_forward / batch_norm_backward take relu_max (ReLU6 fused as relu_max=6)
    clipped_bn_relu: bool = False
    # batch_norm_forward takes residual (added before the activation), batch_norm_backward grad_residual
    residual_bn: bool = False

    # ---- availability and capability
    @abc.abstractmethod
    def is_available(self) -> bool:
        """Whether the backend can run on this machine (its library built, its device present)."""

    def unavailable_reason(self) -> str:
        """Why is_available() is false ("" when it is true)."""
        return ""

    def can_run(self, op: str, algo: Optional[str], shape) -> Optional[str]:
        """Why this backend cannot run op (with algo, for convolutions) on shape, or None. op is a
        kernel-table name; the convolution ops share their algorithm's rule."""
        if op in problem.CONV_OPS:
            if algo not in self.conv_algos:
                return f"backend={self.name!r} does not implement algo={algo!r} (it has {', '.join(self.conv_algos)})"
            return problem.algo_unsupported(algo, shape)
        if not hasattr(self, op):
            return f"backend={self.name!r} has no {op}"
        return None

    def set_num_threads(self, n: int) -> None:
        """Threads for the CPU backends' kernels (GPU backends ignore it)."""

    def blocked_direct(self, shape, dtype) -> bool:
        """Whether this backend's direct forward for shape is channel-blocked, running at its GEMM's
        rate without building im2col panels ('auto' then prefers it to im2col for inference)."""
        return False

    def __repr__(self) -> str:
        return f"<pyconv backend {self.name!r} on {self.device}>"

    # ---- the kernel table
    @abc.abstractmethod
    def conv2d_forward(self, x, w, b, y, shape, algo, stats=None, prepared=None):
        """y <- conv2d(x, w) + b. stats: optional (2, K) float64 <- per-channel sum and sum of
        squares of y (for the fused conv-BN-ReLU). prepared: what prepare_conv_weight returned for
        w, shape and algo (then the kernels take the weights from it)."""

    def conv2d_activation_forward(self, x, w, b, residual, y, shape, algo, activation: str, prepared=None):
        """y <- activation(conv2d(x, w) + b [+ residual]), the inference epilogue of a fused layer.
        Here: the convolution, then activation_forward as a sweep over y. A backend whose kernels
        apply it as they store their output overrides this."""
        self.conv2d_forward(x, w, b, y, shape, algo, prepared=prepared)
        if residual is not None or activation != "none":
            self.activation_forward(y, residual, activation)

    def bind_conv2d_activation(self, w, b, shape, algo, activation: str, prepared=None):
        """conv2d_activation_forward with everything but the input, residual and output fixed:
        fn(x, residual, y), for a planned call repeated many times (a converted model's layer in
        inference). Here a closure over conv2d_activation_forward; a backend may convert the fixed
        operands once (the cpp backend does)."""
        w = w.contiguous()
        b = None if b is None else b.contiguous()

        def run(x, residual, y):
            self.conv2d_activation_forward(x, w, b, residual, y, shape, algo, activation, prepared=prepared)
        return run

    def bind_conv_bn_train(self, shape, algos, bn_shape, activation: str):
        """The fused conv -> batch norm -> activation training step of one planned layer (shape,
        (forward, grad-input, grad-weight) algorithms, the batch norm's shape, an activation this
        backend fuses), called many times: (forward, backward), which make their outputs:
          forward(x, w, b, bn_weight, bn_bias, running_mean, running_var, momentum, eps, residual)
                  -> (z, y, saved, mask): y = conv, z = act(BN(y) [+ residual]), saved the batch's mean
                  and invstd as the rows of one (2, K) tensor, mask what the backward needs of the
                  activation (z itself here; the cpp backend's one bit a value), None without one;
                  the running statistics updated in place;
          backward(gz, mask, y, x, w, bn_weight, saved, wanted) -> (gx, gw, gb, g_bn_weight, g_bn_bias,
                  g_residual), each None where `wanted` (six flags in that order) says so.
        Here closures over the kernel table; a backend may resolve its kernels and shapes once (cpp)."""
        fwd_algo, gi_algo, gw_algo = algos
        relu = activation != "none"
        clip = {"relu_max": 6.0} if activation == "relu6" else {}
        out, K, grad_sizes = (shape.N, shape.K, shape.P, shape.Q), shape.K, conv_bn_train_grad_sizes(shape)

        def forward(x, w, b, bnw, bnb, rm, rv, momentum, eps, residual):
            y, z, saved = new_output(out, x), new_output(out, x), new_output((2, K), x)
            stats = torch.empty((2, K), dtype=torch.float64, device=x.device)
            self.conv2d_forward(x, w, b, y, shape, fwd_algo, stats=stats)
            self.batch_norm_forward(y, bnw, bnb, rm, rv, z, saved[0], saved[1], bn_shape, True, momentum, eps,
                                    relu=relu, stats=stats, **clip, **({} if residual is None else {"residual": residual}))
            return z, y, saved, z if relu else None

        def backward(gz, mask, y, x, w, bnw, saved, wanted):
            gy = new_output(out, x)
            gx, gw, gb, g_bnw, g_bnb, g_res = (new_output(size, x) if want else None
                                               for size, want in zip(grad_sizes, wanted))
            self.batch_norm_backward(gz, y, bnw, saved[0], saved[1], gy, g_bnw, g_bnb, bn_shape, True,
                                     relu_output=mask, **clip,
                                     **({} if g_res is None else {"grad_residual": g_res}))
            if gx is not None:
                self.conv2d_backward_input(gy, w, gx, shape, gi_algo)
            if gw is not None or gb is not None:
                self.conv2d_backward_weight(x, gy, gw, gb, shape, gw_algo)
            return gx, gw, gb, g_bnw, g_bnb, g_res
        return forward, backward

    def prepare_conv_weight(self, w, shape, algo):
        """The weights in the form this algorithm's forward kernel consumes, built once for
        inference (a tensor), or None where there is nothing to prepare."""
        return None

    def prepared_form(self, shape, algo, dtype):
        """What, beside the weight itself, the form prepare_conv_weight builds depends on (a cache
        of it is rebuilt when this changes): the Winograd tile, or 0."""
        return problem.winograd_tile(algo, shape, prepared=True) if algo in problem.WINOGRAD_ALGOS else 0

    @abc.abstractmethod
    def conv2d_backward_input(self, gy, w, gx, shape, algo):
        """gx <- the gradient of conv2d with respect to its input."""

    @abc.abstractmethod
    def conv2d_backward_weight(self, x, gy, gw, gb, shape, algo):
        """gw, gb <- the gradients with respect to weight and bias (either may be None: not wanted)."""

    @abc.abstractmethod
    def max_pool2d_forward(self, x, y, indices, shape):
        """y and indices (torch's flat per-plane h*W+w of each window's maximum)."""

    @abc.abstractmethod
    def max_pool2d_backward(self, gy, indices, gx, shape):
        """gx <- gy scattered to the indices."""

    @abc.abstractmethod
    def avg_pool2d_forward(self, x, y, shape, count_include_pad, divisor_override):
        """divisor_override: 0 = none."""

    @abc.abstractmethod
    def avg_pool2d_backward(self, gy, gx, shape, count_include_pad, divisor_override):
        ...

    @abc.abstractmethod
    def batch_norm_forward(self, x, weight, bias, running_mean, running_var, y, save_mean, save_invstd, shape,
                           training, momentum, eps, relu=False, stats=None):
        """relu: apply ReLU to y; stats: (2, K) float64 per-channel sums of x already taken by the conv."""

    @abc.abstractmethod
    def batch_norm_backward(self, gy, x, weight, save_mean, save_invstd, gx, gw, gb, shape, training,
                            relu_output=None):
        """relu_output: the forward's ReLU output, to mask gy by (fused conv-BN-ReLU)."""

    @abc.abstractmethod
    def activation_forward(self, x, residual, activation: str):
        """x <- activation(x + residual) in place; residual may be None; activation is one of
        problem.ACTIVATIONS."""

    @abc.abstractmethod
    def relu_backward(self, gz, z, gx):
        """gx <- gz where z > 0, else 0."""
