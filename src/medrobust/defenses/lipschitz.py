"""Lipschitz-constrained networks with certified L2 radii (Tsuzuku et al. 2018; spectral
normalisation of Miyato et al. 2018; MaxMin / GroupSort activations of Anil et al. 2019).

Each :class:`LipschitzLinear`, :class:`LipschitzConv1d` and :class:`LipschitzConv2d` divides its
weight by ``max(1, sigma / bound)``, where ``sigma`` estimates the largest singular value of the
layer's linear operator. During training ``sigma`` comes from a few power iterations per step with
a persistent vector (gradients flow through ``sigma``, as in Miyato et al.); the estimate is kept
in a buffer that eval mode uses unchanged, so inference is deterministic. The estimate may be a
little low, so the certificate never trusts it: :func:`lipschitz_bound` measures the operator
norm of every layer *as used at inference*, to convergence, and multiplies them. Dense layers use
the exact spectral norm (``torch.linalg.matrix_norm(ord=2)``). Convolutions use power iteration
on the convolution operator itself, at the actual input size (``conv`` and ``conv_transpose``;
the reshaped kernel matrix does not bound a convolution's norm), until both its last relative
step and the geometric extrapolation of the steps to come are below 1e-6; a Lanczos refinement
(ARPACK) from the final vector follows, because the top singular values of a convolution cluster
and power iteration stopped that way was measured up to 0.3 % low (Lanczos: ~1e-15 over 300
random layers checked against the dense operator). Both are estimates from below of a converged
quantity, not a proof: the certificate is as good as that convergence. :func:`refresh_sigmas`
resets every layer's ``sigma`` to its converged norm after training, so that each layer meets
its ``bound``.

:func:`certified_radius` turns logits and that bound into per-example L2 radii: no perturbation
of smaller L2 norm can change the prediction.

What :func:`lipschitz_bound` supports (anything else raises :class:`ParameterError`):

- the Lipschitz layers above (their converged operator norm; biases do not matter);
- 1-Lipschitz maps: ``ReLU``, :class:`MaxMin`, ``Tanh``, ``Identity``, ``Flatten`` and
  ``Dropout`` (the identity in eval mode);
- max and average pooling, fixed (``MaxPool1d/2d``, ``AvgPool1d/2d``: dilation 1, no ceil mode,
  average pooling without padding or with ``count_include_pad``) or adaptive
  (``AdaptiveMaxPool1d/2d``, ``AdaptiveAvgPool1d/2d``). If every input lies in at most ``m``
  windows of at least ``k`` inputs, max pooling has norm <= ``sqrt(m)`` and average pooling
  <= ``sqrt(m / k)``: non-overlapping max pooling is 1-Lipschitz, non-overlapping average pooling
  with windows of ``k`` is ``1 / sqrt(k)``-Lipschitz, and overlapping windows cost a factor.

The model must apply these modules as a chain, each exactly once, in some order (as
``nn.Sequential`` does); skip connections and modules applied twice are not covered, and a
module applied other than once raises :class:`ParameterError`.
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn
from torch.nn import functional as F

from medrobust.data.task import Task
from medrobust.defenses.base import Defense, TrainingData, check_radii, radius_metric
from medrobust.errors import InputError, ParameterError
from medrobust.metrics import certified_accuracy, predictions
from medrobust.models import TensorSplits
from medrobust.training import predict_logits
from medrobust.types import Modality
from medrobust.validation import check_number

ACTIVATIONS = ("maxmin", "relu")
_TOLERANCE = 1e-6
_MAX_ITERATIONS = 20000


def _check_bound(owner: str, bound: object, name: str = "bound") -> float:
    if (
        isinstance(bound, bool)
        or not isinstance(bound, int | float)
        or not math.isfinite(bound)
        or bound <= 0
    ):
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be a finite number > 0. Got {bound!r} instead."
        )
    return float(bound)


class MaxMin(nn.Module):
    """GroupSort with groups of two (Anil et al. 2019): channels ``[a, b]`` become
    ``[max(a, b), min(a, b)]``. It permutes each pair, so it is 1-Lipschitz and preserves the
    gradient norm (unlike ReLU). Needs an even number of channels (dimension 1).

    Shape:
        (N, C, ...) -> (N, C, ...), C even
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] % 2:
            raise InputError(
                "MaxMin needs an input of shape (N, C, ...) with an even number of channels C. "
                f"Got shape {tuple(x.shape)} instead."
            )
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class _Spectral(nn.Module, abc.ABC):
    """Spectral normalisation machinery shared by the Lipschitz layers.

    Subclasses define the operator (``_operator``), its adjoint (``_adjoint``), the per-example
    input shape the operator acts on (``_vector_shape``), a cheap guaranteed upper bound on the
    operator norm (``_initial_sigma``) and how to apply a weight (``_forward_with``).
    """

    weight: torch.Tensor
    sigma: torch.Tensor
    _vector: torch.Tensor
    bound: float
    power_iterations: int

    def _init_spectral(self, owner: str, bound: float, power_iterations: int) -> None:
        self.bound = _check_bound(owner, bound)
        self.power_iterations = int(
            check_number(owner, "power_iterations", power_iterations, minimum=1, integer=True)
        )
        # A guaranteed upper bound until training estimates sigma, so that an untrained layer in
        # eval mode already respects its bound.
        self.register_buffer("sigma", self._initial_sigma().detach().clone())
        self.register_buffer("_vector", torch.empty(0), persistent=False)

    @abc.abstractmethod
    def _initial_sigma(self) -> torch.Tensor:
        """A cheap guaranteed upper bound on the operator norm of the current weight."""

    @abc.abstractmethod
    def _operator(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The linear map of ``weight`` applied to ``v``."""

    @abc.abstractmethod
    def _adjoint(self, u: torch.Tensor, weight: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """The adjoint map applied to ``u``, giving a vector of ``shape``."""

    @abc.abstractmethod
    def _vector_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """The per-example input shape the operator acts on, for inputs of ``x_shape``."""

    @abc.abstractmethod
    def _forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's output for ``x`` with ``weight`` in place of its own."""

    def _iterate(self, v: torch.Tensor, weight: torch.Tensor, iterations: int) -> torch.Tensor:
        shape = tuple(v.shape)
        for _ in range(iterations):
            u = self._operator(v, weight)
            u = u / u.norm().clamp_min(1e-12)
            v = self._adjoint(u, weight, shape)
            v = v / v.norm().clamp_min(1e-12)
        return v

    def scale(self) -> torch.Tensor:
        """The divisor ``max(1, sigma / bound)`` applied to the weight in eval mode."""
        return (self.sigma / self.bound).clamp_min(1.0)

    def effective_weight(self) -> torch.Tensor:
        """The weight used at inference: ``weight / max(1, sigma / bound)``."""
        return self.weight / self.scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._forward_with(x, self.effective_weight())
        shape = self._vector_shape(x.shape)
        with torch.no_grad():
            v = self._vector
            if tuple(v.shape) != shape or v.device != x.device or v.dtype != x.dtype:
                v = torch.randn(shape, device=x.device, dtype=x.dtype)
                v = v / v.norm()
            v = self._iterate(v, self.weight.detach(), self.power_iterations)
            self._vector = v
        sigma = self._operator(v, self.weight).norm()  # differentiable, as in Miyato et al.
        with torch.no_grad():
            self.sigma.copy_(sigma.detach())
        return self._forward_with(x, self.weight / (sigma / self.bound).clamp_min(1.0))

    @torch.no_grad()
    def operator_norm(self, input_shape: Sequence[int] | None = None) -> float:
        """The converged L2 operator norm of the layer as used at inference.

        Args:
            input_shape: shape of one input without the batch dimension (needed for
                convolutions, whose norm depends on the input size; ignored by dense layers).
        """
        weight = self.effective_weight().detach().double()
        shape = self._vector_shape((1, *(input_shape or ())))
        generator = torch.Generator().manual_seed(0)
        v = torch.randn(shape, generator=generator, dtype=torch.float64).to(weight.device)
        v = v / v.norm()
        previous, change_before, value = 0.0, math.inf, 0.0
        for _ in range(_MAX_ITERATIONS):
            u = self._operator(v, weight)
            value = float(u.norm())
            if value == 0.0:
                return 0.0
            v = self._adjoint(u / value, weight, shape)
            v = v / v.norm().clamp_min(1e-300)
            # The estimates rise monotonically; where two singular values are close they rise
            # slowly, and a small step does not mean a small distance to the limit. The steps
            # shrink geometrically (ratio q), so what is left is about step * q / (1 - q): stop
            # when that too is below the tolerance, and add it (a slight overestimate is safe).
            change = abs(value - previous)
            if change <= _TOLERANCE * value:
                ratio = change / change_before if change_before > 0 else 0.0
                remaining = change * ratio / (1 - ratio) if ratio < 1 else math.inf
                if remaining <= _TOLERANCE * value:
                    return max(value + remaining, self._lanczos(weight, v))
            previous, change_before = value, change
        lanczos = self._lanczos(weight, v)
        if lanczos > 0.0:  # ARPACK converged (to 1e-12) where the power iteration crawled
            return max(value, lanczos)
        warnings.warn(
            f"Neither the power iteration of {type(self).__name__} ({_MAX_ITERATIONS} "
            f"iterations) nor Lanczos converged; its norm {value:.6g} may be underestimated.",
            RuntimeWarning,
            stacklevel=2,
        )
        return value

    def _lanczos(self, weight: torch.Tensor, start: torch.Tensor) -> float:
        """sqrt of the largest eigenvalue of ``W^T W`` by Lanczos (ARPACK), from ``start``.

        Power iteration crawls where the top singular values cluster, as they do for
        convolutions (whose spectrum is a nearly continuous frequency response): stopped by the
        1e-6 rule it was measured up to 0.3 % low on a small 1D convolution. Lanczos converges
        to near machine precision there in a few hundred operator applications.
        """
        shape = tuple(start.shape)
        size = start.numel()

        def gram(flat: np.ndarray) -> np.ndarray:
            v = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float64)).to(weight.device)
            out = self._adjoint(self._operator(v.view(shape), weight), weight, shape)
            return np.asarray(out.reshape(-1).cpu().numpy(), dtype=np.float64)

        if size < 3:
            return 0.0  # the power iteration is exact in one or two dimensions
        operator = LinearOperator((size, size), matvec=gram, dtype=np.float64)
        initial = start.reshape(-1).cpu().numpy().astype(np.float64)
        try:
            values = eigsh(operator, k=1, which="LA", v0=initial, tol=1e-12, maxiter=20 * size)
        except ArpackNoConvergence:
            return 0.0
        return math.sqrt(max(float(values[0][0]), 0.0))


class LipschitzLinear(_Spectral, nn.Linear):
    """A linear layer whose operator norm is at most ``bound`` (spectral normalisation).

    Args:
        in_features, out_features, bias: as for ``nn.Linear``.
        bound: the largest operator norm allowed (> 0).
        power_iterations: power iterations per training step.

    Shape:
        (N, in_features) -> (N, out_features)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bound: float = 1.0,
        power_iterations: int = 1,
    ) -> None:
        nn.Linear.__init__(self, in_features, out_features, bias)
        self._init_spectral("LipschitzLinear", bound, power_iterations)

    def _initial_sigma(self) -> torch.Tensor:
        norm: torch.Tensor = torch.linalg.matrix_norm(self.weight.detach().double(), ord=2)
        return norm.float()

    def _operator(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(v, weight)

    def _adjoint(self, u: torch.Tensor, weight: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return u @ weight

    def _vector_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        return (1, self.in_features)

    def _forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)

    @torch.no_grad()
    def operator_norm(self, input_shape: Sequence[int] | None = None) -> float:
        """The exact spectral norm of the effective weight (``input_shape`` is ignored)."""
        weight = self.effective_weight().detach().double()
        return float(torch.linalg.matrix_norm(weight, ord=2))


class _LipschitzConv(_Spectral):
    """Convolution operator and adjoint for :class:`LipschitzConv1d` / :class:`LipschitzConv2d`."""

    in_channels: int
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    bias: torch.Tensor | None
    _dims: int

    def _check_conv(self, owner: str) -> None:
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            raise ParameterError(
                f"The padding of {owner} must be integers with padding_mode='zeros' (the adjoint "
                f"is conv_transpose). Got padding={self.padding!r}, "
                f"padding_mode={self.padding_mode!r} instead."
            )

    def _initial_sigma(self) -> torch.Tensor:
        # The convolution is a sum over kernel offsets of shifted (norm <= 1) channel mixings, so
        # its norm is at most sum_offsets ||W_offset||_2 <= sqrt(offsets) * ||W||_F.
        offsets = math.prod(self.kernel_size)
        norm: torch.Tensor = self.weight.detach().double().norm() * math.sqrt(offsets)
        return norm.float()

    def _conv(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        padding = cast(tuple[int, ...], self.padding)  # strings are rejected at construction
        conv = F.conv1d if self._dims == 1 else F.conv2d
        return conv(v, weight, None, self.stride, padding, self.dilation, self.groups)

    def _operator(self, v: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._conv(v, weight)

    def _adjoint(self, u: torch.Tensor, weight: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        padding = cast(tuple[int, ...], self.padding)
        spatial = shape[2:]
        # conv_transpose's output size is ambiguous for strides > 1; output_padding picks the one
        # that matches the input the convolution saw.
        output_padding = tuple(
            int(spatial[d])
            - (
                (int(u.shape[2 + d]) - 1) * self.stride[d]
                - 2 * padding[d]
                + self.dilation[d] * (self.kernel_size[d] - 1)
                + 1
            )
            for d in range(self._dims)
        )
        transpose = F.conv_transpose1d if self._dims == 1 else F.conv_transpose2d
        return transpose(
            u, weight, None, self.stride, padding, output_padding, self.groups, self.dilation
        )

    def _vector_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        spatial = tuple(int(s) for s in x_shape[2:]) if len(x_shape) > 2 else ()
        if len(x_shape) != self._dims + 2 or any(s < 1 for s in spatial):
            raise ParameterError(
                f"{type(self).__name__} needs inputs of shape "
                f"(N, C, {'L' if self._dims == 1 else 'H, W'}); "
                f"the input shape without the batch dimension must have {self._dims + 1} positive "
                f"entries. Got {tuple(int(s) for s in x_shape[1:])} instead."
            )
        return (1, self.in_channels, *spatial)

    def _forward_with(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = self._conv(x, weight)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, *([1] * self._dims))
        return out


class LipschitzConv1d(_LipschitzConv, nn.Conv1d):
    """A 1D convolution whose operator norm (at any input length) is at most ``bound``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as for
            ``nn.Conv1d`` (integer padding, zero padding mode).
        bound: the largest operator norm allowed (> 0).
        power_iterations: power iterations per training step.

    Shape:
        (N, in_channels, L) -> (N, out_channels, L_out)
    """

    _dims = 1

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        bound: float = 1.0,
        power_iterations: int = 1,
    ) -> None:
        nn.Conv1d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self._check_conv("LipschitzConv1d")
        self._init_spectral("LipschitzConv1d", bound, power_iterations)


class LipschitzConv2d(_LipschitzConv, nn.Conv2d):
    """A 2D convolution whose operator norm (at any input size) is at most ``bound``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias: as for
            ``nn.Conv2d`` (integer padding, zero padding mode).
        bound: the largest operator norm allowed (> 0).
        power_iterations: power iterations per training step.

    Shape:
        (N, in_channels, H, W) -> (N, out_channels, H_out, W_out)
    """

    _dims = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        bound: float = 1.0,
        power_iterations: int = 1,
    ) -> None:
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias
        )
        self._check_conv("LipschitzConv2d")
        self._init_spectral("LipschitzConv2d", bound, power_iterations)


def _activation(owner: str, name: str) -> nn.Module:
    if name == "maxmin":
        return MaxMin()
    if name == "relu":
        return nn.ReLU()
    raise ParameterError(
        f"The 'activation' parameter of {owner} must be one of {ACTIVATIONS}. Got {name!r} instead."
    )


def _check_even(owner: str, name: str, value: int, activation: str) -> None:
    if activation == "maxmin" and value % 2:
        raise ParameterError(
            f"With activation='maxmin', the '{name}' of {owner} must be even (MaxMin sorts "
            f"pairs of channels). Got {value} instead."
        )


class LipschitzMLP(nn.Module):
    """A fully connected network whose L2 Lipschitz constant is at most ``bound``: each of the
    ``len(hidden) + 1`` spectrally normalised layers gets ``bound ** (1 / layers)``.

    Args:
        in_features: input features.
        num_outputs: logits (1 for a one-logit binary model).
        hidden: hidden widths (even with the MaxMin activation).
        bound: target Lipschitz constant of the whole network (> 0).
        activation: ``"maxmin"`` (gradient norm preserving) or ``"relu"``.
        power_iterations: power iterations per training step in each layer.

    Shape:
        (N, in_features) -> (N, num_outputs)
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        *,
        hidden: tuple[int, ...] = (64, 32),
        bound: float = 1.0,
        activation: str = "maxmin",
        power_iterations: int = 1,
    ) -> None:
        super().__init__()
        owner = "LipschitzMLP"
        check_number(owner, "in_features", in_features, minimum=1, integer=True)
        check_number(owner, "num_outputs", num_outputs, minimum=1, integer=True)
        bound = _check_bound(owner, bound)
        for size in hidden:
            check_number(owner, "hidden", size, minimum=1, integer=True)
        _activation(owner, activation)
        for size in hidden:
            _check_even(owner, "hidden sizes", size, activation)
        per_layer = bound ** (1.0 / (len(hidden) + 1))
        self.bound = bound
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden:
            layers += [
                LipschitzLinear(width, size, bound=per_layer, power_iterations=power_iterations),
                _activation(owner, activation),
            ]
            width = size
        layers.append(
            LipschitzLinear(width, num_outputs, bound=per_layer, power_iterations=power_iterations)
        )
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


class _LipschitzConvNet(nn.Module):
    """Four spectrally normalised convolutions (the second and third with stride 2, the last
    spanning the remaining feature map), global max pooling (1-Lipschitz, any input size) and a
    spectrally normalised linear layer; each of the five layers gets ``bound ** (1 / 5)``."""

    _dims = 2
    _owner = "LipschitzCNN"
    _first_kernel = 3
    _last_kernel = 7

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        width: int = 16,
        bound: float = 1.0,
        activation: str = "maxmin",
        power_iterations: int = 1,
    ) -> None:
        super().__init__()
        owner = self._owner
        check_number(owner, "in_channels", in_channels, minimum=1, integer=True)
        check_number(owner, "num_outputs", num_outputs, minimum=1, integer=True)
        check_number(owner, "width", width, minimum=1, integer=True)
        bound = _check_bound(owner, bound)
        _activation(owner, activation)
        _check_even(owner, "width", width, activation)
        self.bound = bound
        per_layer = bound ** (1.0 / 5)
        conv: type[LipschitzConv1d] | type[LipschitzConv2d] = (
            LipschitzConv1d if self._dims == 1 else LipschitzConv2d
        )
        pool: type[nn.Module] = nn.AdaptiveMaxPool1d if self._dims == 1 else nn.AdaptiveMaxPool2d
        settings: dict[str, Any] = {"bound": per_layer, "power_iterations": power_iterations}
        k = self._first_kernel
        self.features = nn.Sequential(
            conv(in_channels, width, k, padding=k // 2, **settings),
            _activation(owner, activation),
            conv(width, 2 * width, 4, stride=2, padding=1, **settings),
            _activation(owner, activation),
            conv(2 * width, 2 * width, 4, stride=2, padding=1, **settings),
            _activation(owner, activation),
            # A dense layer over the last feature map (7 x 7 for 28 px images, 35 for 140-sample
            # beats); larger inputs leave a map that the 1-Lipschitz global max pool reduces.
            conv(2 * width, 4 * width, self._last_kernel, **settings),
            _activation(owner, activation),
            pool(1),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            LipschitzLinear(4 * width, num_outputs, **settings),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # type: ignore[no-any-return]


class LipschitzCNN(_LipschitzConvNet):
    """A CNN for 2D images whose L2 Lipschitz constant is at most ``bound``.

    Args:
        in_channels: image channels.
        num_outputs: logits (1 for a one-logit binary model).
        width: channels of the first convolution (even with MaxMin); later ones have twice that.
        bound: target Lipschitz constant of the whole network (> 0), ``bound ** (1/5)`` per layer.
        activation: ``"maxmin"`` or ``"relu"``.
        power_iterations: power iterations per training step in each layer.

    Shape:
        (N, C, H, W) -> (N, num_outputs)
    """


class LipschitzCNN1d(_LipschitzConvNet):
    """A 1D CNN for ECG beats whose L2 Lipschitz constant is at most ``bound``; as
    :class:`LipschitzCNN` with 1D convolutions (first kernel 7).

    Shape:
        (N, C, T) -> (N, num_outputs)
    """

    _dims = 1
    _owner = "LipschitzCNN1d"
    _first_kernel = 7
    _last_kernel = 35


_ONE_LIPSCHITZ = (nn.ReLU, MaxMin, nn.Tanh, nn.Identity, nn.Flatten, nn.Dropout)
_FIXED_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
_ADAPTIVE_POOLS = (
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
)


def _as_tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    return tuple(int(v) for v in value)


def _window_stats(starts: np.ndarray, ends: np.ndarray, size: int) -> tuple[int, int]:
    """(most windows containing one input, fewest inputs in a window) along one dimension."""
    counts = np.zeros(size, dtype=np.int64)
    for start, end in zip(starts, ends, strict=True):
        counts[max(start, 0) : min(end, size)] += 1
    return int(counts.max(initial=0)), int((ends - starts).min(initial=size))


def _pool_factor(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> float:
    dims = 1 if "1d" in type(module).__name__ else 2
    spatial_in, spatial_out = in_shape[-dims:], out_shape[-dims:]
    overlap, smallest = 1, 1
    is_max = "Max" in type(module).__name__
    if isinstance(module, _ADAPTIVE_POOLS):
        for size, out in zip(spatial_in, spatial_out, strict=True):
            index = np.arange(out)
            starts = (index * size) // out
            ends = -((-(index + 1) * size) // out)
            m, k = _window_stats(starts, ends, size)
            overlap, smallest = overlap * m, smallest * k
    else:
        fixed = cast(Any, module)
        kernel = _as_tuple(fixed.kernel_size, dims)
        stride = _as_tuple(fixed.stride, dims)
        padding = _as_tuple(fixed.padding, dims)
        dilation = _as_tuple(getattr(module, "dilation", 1), dims)
        ceil = bool(getattr(module, "ceil_mode", False))
        include_pad = bool(getattr(module, "count_include_pad", True))
        if (
            any(d != 1 for d in dilation)
            or ceil
            or (not is_max and any(padding) and not include_pad)
        ):
            raise ParameterError(
                f"lipschitz_bound supports {type(module).__name__} with dilation 1, "
                "ceil_mode=False and (average pooling) no padding or count_include_pad=True. "
                f"Got {module!r} instead."
            )
        for size, out, k, s, p in zip(
            spatial_in, spatial_out, kernel, stride, padding, strict=True
        ):
            starts = np.arange(out) * s - p
            m, _ = _window_stats(starts, starts + k, size)
            # The divisor of average pooling with count_include_pad is the full kernel.
            overlap, smallest = overlap * m, smallest * k
    return math.sqrt(overlap) if is_max else math.sqrt(overlap / smallest)


def _check_shape(input_shape: object) -> tuple[int, ...]:
    if (
        not isinstance(input_shape, tuple | list | torch.Size)
        or len(input_shape) == 0
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in input_shape)
    ):
        raise ParameterError(
            "The 'input_shape' of lipschitz_bound must be a non-empty tuple of positive integers: "
            f"the shape of one input without the batch dimension. Got {input_shape!r} instead."
        )
    return tuple(input_shape)


Traced = list[tuple[str, nn.Module, tuple[int, ...], tuple[int, ...]]]


@torch.no_grad()
def _trace(model: nn.Module, input_shape: Sequence[int]) -> Traced:
    """(name, module, input shape, output shape) of each leaf module the model applies once."""
    shape = _check_shape(input_shape)
    leaves = {name: m for name, m in model.named_modules() if not list(m.children())}
    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {n: [] for n in leaves}
    handles = []
    for name, module in leaves.items():

        def hook(mod: nn.Module, args: tuple[Any, ...], out: Any, name: str = name) -> None:
            calls[name].append((tuple(args[0].shape), tuple(out.shape)))

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None else torch.float32
        model(torch.zeros((1, *shape), device=device, dtype=dtype))
    except (RuntimeError, ValueError, IndexError, InputError) as exc:
        raise ParameterError(
            f"The model cannot run on inputs of shape {shape} given to lipschitz_bound: {exc}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    traced: Traced = []
    for name, module in leaves.items():
        seen = calls[name]
        if not seen and not list(module.parameters()):
            continue
        if len(seen) != 1:
            raise ParameterError(
                f"lipschitz_bound needs every module applied exactly once; {name or 'the model'} "
                f"({type(module).__name__}) was applied {len(seen)} times."
            )
        traced.append((name, module, *seen[0]))
    return traced


def layer_norms(model: nn.Module, input_shape: Sequence[int]) -> list[tuple[str, float]]:
    """The certified L2 Lipschitz factor of each module the model applies (in registration
    order, which need not be the call order; the product does not depend on it).

    Args:
        model: a chain of the modules listed in the module docstring.
        input_shape: the shape of one input without the batch dimension, e.g. ``(1, 28, 28)``.

    Raises:
        ParameterError: a module is not supported, is applied other than once, or the shape is bad.
    """
    order: list[tuple[str, float]] = []
    for name, module, in_shape, out_shape in _trace(model, input_shape):
        if isinstance(module, _Spectral):
            factor = module.operator_norm(in_shape[1:])
        elif isinstance(module, _ONE_LIPSCHITZ):
            factor = 1.0
        elif isinstance(module, (*_FIXED_POOLS, *_ADAPTIVE_POOLS)):
            factor = _pool_factor(module, in_shape, out_shape)
        else:
            raise ParameterError(
                f"lipschitz_bound does not support {type(module).__name__} ({name}); supported: "
                "LipschitzLinear, LipschitzConv1d/2d, ReLU, MaxMin, Tanh, Identity, Flatten, "
                "Dropout, and max/average pooling (fixed or adaptive)."
            )
        order.append((name, factor))
    return order


@torch.no_grad()
def refresh_sigmas(model: nn.Module, input_shape: Sequence[int]) -> None:
    """Set every Lipschitz layer's ``sigma`` to the converged norm of its raw weight, so that
    each layer's norm at inference is at most its ``bound`` (up to the power iteration's
    tolerance). Training leaves ``sigma`` a power-iteration estimate one optimiser step old.

    Args:
        model: a chain of supported modules.
        input_shape: the shape of one input without the batch dimension.
    """
    for _, module, in_shape, _ in _trace(model, input_shape):
        if isinstance(module, _Spectral):
            module.sigma.fill_(module.bound)  # scale 1: the norm below is then the raw weight's
            module.sigma.fill_(max(module.operator_norm(in_shape[1:]), 1e-12))


def lipschitz_bound(model: nn.Module, input_shape: Sequence[int]) -> float:
    """An upper bound on the L2 Lipschitz constant of ``model`` (in eval mode) on inputs of
    ``input_shape``: the product of the converged per-module factors of :func:`layer_norms`.

    Args:
        model: a chain of supported modules (see the module docstring).
        input_shape: the shape of one input without the batch dimension, e.g. ``(30,)``.
    """
    return math.prod(factor for _, factor in layer_norms(model, input_shape))


def certified_radius(logits: torch.Tensor, lipschitz: float) -> torch.Tensor:
    """Per-example certified L2 radius of a classifier with Lipschitz constant ``lipschitz``
    (Tsuzuku et al. 2018): ``margin / (sqrt(2) * L)`` for K >= 2 logits, where ``margin`` is the
    top logit minus the runner-up; ``|z| / L`` for one logit ``z``.

    Args:
        logits: (N, K) logits.
        lipschitz: the L2 Lipschitz constant of the logits (e.g. :func:`lipschitz_bound`).

    Shape:
        (N, K) -> (N,)
    """
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] < 1:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ParameterError(
            f"The 'logits' of certified_radius must be a tensor of shape (N, K) with K >= 1. "
            f"Got {shape} instead."
        )
    lipschitz = _check_bound("certified_radius", lipschitz, "lipschitz")
    if logits.shape[1] == 1:
        return logits[:, 0].abs() / lipschitz
    top = logits.topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]) / (math.sqrt(2.0) * lipschitz)


class LipschitzConstraint(Defense):
    """Lipschitz-constrained networks as a defense (Tsuzuku et al. 2018; Anil et al. 2019): the
    model is replaced by the modality's Lipschitz architecture (:class:`LipschitzCNN` for images,
    :class:`LipschitzCNN1d` for ECG, :class:`LipschitzMLP` for tabular data) with the bound
    ``bound``, trained as usual; afterwards every layer's ``sigma`` is reset to its converged norm
    (:func:`refresh_sigmas`) and :meth:`certify` reports the certified accuracy at ``radii`` from
    :func:`certified_radius` and the measured :func:`lipschitz_bound`.

    The bound is a parameter per modality (a study sets it per task or modality and can sweep
    it): a tighter bound certifies larger radii and costs clean accuracy.

    Args:
        bound: the network's target L2 Lipschitz constant (> 0).
        activation: ``"maxmin"`` or ``"relu"``.
        width: first-layer channels of the convolutional architectures.
        hidden: hidden widths of the MLP.
        power_iterations: power iterations per training step in each layer.
        radii: the L2 radii at which certified accuracy is reported.

    Shape:
        like the model
    """

    name = "lipschitz"
    modalities = frozenset({Modality.IMAGE, Modality.ECG, Modality.TABULAR})

    def __init__(
        self,
        *,
        bound: float = 1.0,
        activation: str = "maxmin",
        width: int = 16,
        hidden: Sequence[int] = (64, 32),
        power_iterations: int = 1,
        radii: Sequence[float] = (0.0, 0.1, 0.25, 0.5),
    ) -> None:
        owner = type(self).__name__
        self.bound = _check_bound(owner, bound)
        if activation not in ACTIVATIONS:
            raise ParameterError(
                f"The 'activation' parameter of {owner} must be one of {ACTIVATIONS}. "
                f"Got {activation!r} instead."
            )
        self.activation = activation
        self.width = int(check_number(owner, "width", width, minimum=2, integer=True))
        if not isinstance(hidden, list | tuple) or not hidden:
            raise ParameterError(
                f"The 'hidden' parameter of {owner} must be a non-empty list of widths. "
                f"Got {hidden!r} instead."
            )
        self.hidden = tuple(
            int(check_number(owner, "hidden", h, minimum=1, integer=True)) for h in hidden
        )
        self.power_iterations = int(
            check_number(owner, "power_iterations", power_iterations, minimum=1, integer=True)
        )
        self.radii = check_radii(owner, radii)

    def params(self) -> dict[str, Any]:
        return {
            "bound": self.bound,
            "activation": self.activation,
            "width": self.width,
            "hidden": list(self.hidden),
            "power_iterations": self.power_iterations,
            "radii": list(self.radii),
        }

    def build(
        self, model_name: str, task: Task, inputs: TensorSplits, model_params: dict[str, Any]
    ) -> nn.Module:
        """The modality's Lipschitz architecture, with the outputs of the model it replaces."""
        self.check_task(task)
        outputs = int(model_params.get("outputs", task.num_classes))
        channels = int(inputs.x["train"].shape[1])
        bound, activation, iterations = self.bound, self.activation, self.power_iterations
        if task.modality is Modality.TABULAR:
            return LipschitzMLP(
                channels,
                outputs,
                hidden=self.hidden,
                bound=bound,
                activation=activation,
                power_iterations=iterations,
            )
        net = LipschitzCNN if task.modality is Modality.IMAGE else LipschitzCNN1d
        return net(
            channels,
            outputs,
            width=self.width,
            bound=bound,
            activation=activation,
            power_iterations=iterations,
        )

    def after_fit(self, model: nn.Module, data: TrainingData) -> None:
        """Set every layer's ``sigma`` to its converged norm (the certificate's)."""
        refresh_sigmas(model, tuple(data.x_train.shape[1:]))

    def certify(
        self, model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor, *, seed: int
    ) -> dict[str, float]:
        self._check_certify(model, task, x, y, seed)
        bound = lipschitz_bound(model, tuple(x.shape[1:]))
        logits = predict_logits(model, x)
        radii = certified_radius(logits, bound)
        correct = predictions(logits) == y.cpu()
        accuracy = certified_accuracy(radii, correct, self.radii)
        return {
            **{radius_metric(r): float(a) for r, a in zip(self.radii, accuracy, strict=True)},
            "certified_mean_radius": float(radii.mean()),
            "lipschitz_bound": bound,
        }


__all__ = [
    "ACTIVATIONS",
    "LipschitzCNN",
    "LipschitzCNN1d",
    "LipschitzConstraint",
    "LipschitzConv1d",
    "LipschitzConv2d",
    "LipschitzLinear",
    "LipschitzMLP",
    "MaxMin",
    "certified_radius",
    "layer_norms",
    "lipschitz_bound",
    "refresh_sigmas",
]
