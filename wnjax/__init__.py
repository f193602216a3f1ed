"""wnjax: implicit bias of gradient flow and descent on weight-normalized homogeneous nets.

Data flow: model (``MLP``, ``CNN``, any bias-free equinox net) -> parameterization (``ewn``,
``swn``, ``standard``) -> loss (``Exponential``, ...) -> dynamics (``gradient_flow``,
``gradient_descent``) -> diagnostics -> sweeps.

The core, by topic:

- **errors**: ``WnjaxError``, ``InvalidInput``, ``RunFailed`` (base of ``FlowFailed`` and
  ``GDFailed``), the warning ``TargetMetAtStart``;
- **models**: ``MLP``, ``CNN``, ``CoordinateLinear``, ``ReLUPower``, ``Identity``,
  ``relu_power``, ``homogeneity_degree``, ``weight_layers``, ``neuron_norms``, ``smooth_kinks``;
- **parameterizations**: ``ewn``, ``swn``, ``standard``, ``parameterization``, ``parameterize``,
  ``to_standard``, ``Parameterized``, ``LayerWeight``, ``EWN``, ``SWN``, ``Standard``, ``Frozen``;
- **losses**: ``Loss``, ``Exponential``, ``Logistic``, ``LogisticThenExponential``, ``Square``,
  ``CrossEntropy``, ``get_loss``, ``log_loss``, ``margins``;
- **gradient flow**: ``gradient_flow``, ``FlowResult``, ``FlowFailed``, ``default_solver``,
  ``default_kink_width``, ``AutoSwitch``, ``stiff_solver``, ``AtTimes``, ``LogSpaced``,
  ``AtLossLevels``, ``loss_levels``, ``summaries``;
- **gradient descent**: ``gradient_descent``, ``traced_gradient_descent``, ``GDResult``,
  ``GDFailed``, ``loss_normalized_sgd``, ``neuron_rate_sgd``, ``scale_by_neuron_norm_sq``;
- **equivalence**: ``equivalence_check``, ``flow_equivalence``, ``gd_equivalence``;
- **diagnostics**: ``normalized_margin``, ``loss_rate_exponents``, ``relation_residuals``,
  ``relative_neuron_norms``, ``count_neurons_above``, ``log_neuron_gradient_norms``,
  ``alignment``, ``loss_direction``, ``approximate_kkt_residual``, ``asymptotic_summaries``;
- **sweeps**: ``sweep``, ``SweepResult``, ``split_grid``, ``plot_bands``, ``Store``,
  ``StoreMismatch``;
- **reproductions**: ``reproduce`` (see ``wnjax.experiments``).

Sub-namespaces: ``wnjax.diagonal`` (diagonal linear nets), ``wnjax.tensor`` (linear tensor
networks), ``wnjax.small_init`` (small initialization), ``wnjax.data`` (data sets),
``wnjax.experiments`` (the papers' reproductions), ``wnjax.problems`` (the theorem zoo).
The core never imports them.

``import wnjax`` imports JAX and turns on its persistent compilation cache; every name is
imported from its module on first use (PEP 562), so equinox, diffrax, optax and scipy load only
when needed.
"""

import importlib as _importlib
import importlib.metadata as _metadata
import warnings as _warnings

import wnjax._runtime.cache as _cache

_cache.enable()

try:
    __version__ = _metadata.version("wnjax")
except _metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

# Every public name of the core, by the module that defines it.
_EXPORTS: dict[str, tuple[str, ...]] = {
    "wnjax._runtime.errors": ("InvalidInput", "TargetMetAtStart", "WnjaxError"),
    "wnjax._nets.models": (
        "CNN",
        "MLP",
        "CoordinateLinear",
        "Identity",
        "ReLUPower",
        "homogeneity_degree",
        "relu_power",
    ),
    "wnjax._nets.neurons": ("neuron_norms", "weight_layers"),
    "wnjax._nets.kinks": ("smooth_kinks",),
    "wnjax._nets.parameterize": (
        "EWN",
        "SWN",
        "Frozen",
        "LayerWeight",
        "Parameterized",
        "Standard",
        "ewn",
        "parameterize",
        "parameterization",
        "standard",
        "swn",
        "to_standard",
    ),
    "wnjax._losses": (
        "CrossEntropy",
        "Exponential",
        "Logistic",
        "LogisticThenExponential",
        "Loss",
        "Square",
        "get_loss",
        "log_loss",
        "margins",
    ),
    "wnjax._dynamics.flow": (
        "FlowFailed",
        "FlowResult",
        "default_kink_width",
        "default_solver",
        "gradient_flow",
        "loss_levels",
    ),
    "wnjax._dynamics.outcome": ("RunFailed",),
    "wnjax._dynamics.save": ("AtLossLevels", "AtTimes", "LogSpaced"),
    "wnjax._solver.auto": ("AutoSwitch",),
    "wnjax._solver.stiff": ("stiff_solver",),
    "wnjax._dynamics.descent": ("GDFailed", "GDResult", "gradient_descent"),
    "wnjax._dynamics.batched": ("traced_gradient_descent",),
    "wnjax._dynamics.schedules": ("loss_normalized_sgd",),
    "wnjax._dynamics.transforms": ("neuron_rate_sgd", "scale_by_neuron_norm_sq"),
    "wnjax._analysis.equivalence": ("equivalence_check", "flow_equivalence", "gd_equivalence"),
    "wnjax._analysis.diagnostics": (
        "alignment",
        "approximate_kkt_residual",
        "asymptotic_summaries",
        "count_neurons_above",
        "log_neuron_gradient_norms",
        "loss_direction",
        "loss_rate_exponents",
        "normalized_margin",
        "relation_residuals",
        "relative_neuron_norms",
        "summaries",
    ),
    "wnjax._sweeps.sweep": ("SweepResult", "plot_bands", "split_grid", "sweep"),
    "wnjax._sweeps.store": ("Store", "StoreMismatch"),
    "wnjax.experiments": ("reproduce",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

# Sub-namespaces, imported on first use.
_SUBPACKAGES = ("data", "diagonal", "experiments", "problems", "small_init", "tensor")

# Names of the flat 0.1 namespace that now live in a sub-namespace: old name -> new path.
_MOVED: dict[str, str] = {
    **{
        n: f"wnjax.data.{n}"
        for n in ("digits", "lin_sep", "load_mnist", "mnist", "read_idx", "train_test_split", "xor")
    },
    "conv_rate_data": "wnjax.data.conv_rate",
    "experiment_options": "wnjax.experiments.options",
    "show_run": "wnjax.experiments.show_run",
    "log_softplus": "wnjax._losses.log_softplus",
    **{
        n: f"wnjax.diagonal.{n}"
        for n in (
            "DiagonalNet",
            "coordinate_wn",
            "effective_alpha",
            "invariant_spread",
            "polar_wn",
            "regroup",
            "relative_error",
            "sparse_problem",
            "uv_products",
            "uv_ratio",
            "PolarRates",
            "polar_rates",
            "polar_sgd",
            "l1_interpolator",
            "min_l2_interpolator",
            "q_alpha",
            "q_alpha_interpolator",
        )
    },
    "diagonal_net": "wnjax.diagonal.net",
    "diagonal_signal": "wnjax.diagonal.signal",
    **{
        n: f"wnjax.tensor.{n}"
        for n in (
            "ConvolutionTensor",
            "DataTensor",
            "DenseTensor",
            "DiagonalTensor",
            "FullyConnectedTensor",
            "OdecoTensor",
            "TensorNetwork",
            "circular_convolution",
            "diagonal_regression_init",
            "fourier_features",
            "fourier_regression_init",
            "fourier_rho",
            "fully_connected_regression_init",
            "linear_predictor",
            "odeco_to_diagonal",
            "transformed_rho",
            "group_max_margin",
            "l1_max_margin",
            "regression_link",
            "min_norm_interpolant",
            "regression_limit",
        )
    },
    "convolutional_tensor_net": "wnjax.tensor.convolutional_net",
    "diagonal_tensor_net": "wnjax.tensor.diagonal_net",
    "fully_connected_tensor_net": "wnjax.tensor.fully_connected_net",
    "odeco_tensor_net": "wnjax.tensor.odeco_net",
    "tensor_network": "wnjax.tensor.network",
    "tensor_kkt_residual": "wnjax.tensor.kkt_residual",
    "tensor_margin": "wnjax.tensor.margin",
    **{
        n: f"wnjax.small_init.{n}"
        for n in (
            "KKTPoint",
            "SecondOrder",
            "kkt_residual",
            "ncf_kkt_point",
            "ncf_second_order",
            "neural_correlation",
            "trainable_degree",
            "Plateau",
            "ReducedNetwork",
            "SupportMask",
            "crossing_time",
            "direction_cosines",
            "escape_time",
            "find_plateaus",
            "flow_escape_time",
            "fit_escape_scaling",
            "log_save_times",
            "reduced_network",
            "relu2_teacher_data",
            "scale_to_norm",
            "unit_norms",
        )
    },
    "SmallInitDiagnostics": "wnjax.small_init.Diagnostics",
    "small_init_diagnostics": "wnjax.small_init.diagnostics",
}

__all__ = sorted(_MODULE_OF)


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(_importlib.import_module(module), name)


def __getattr__(name: str):
    """Import a public name from its module on first use (PEP 562); later uses find it here.
    A sub-namespace or private submodule (``wnjax.tensor``, ``wnjax._nets``) is imported on first
    use too; a name of the 0.1 flat namespace resolves to its new place with a warning."""
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name in _MOVED:
        _warnings.warn(
            f"wnjax.{name} has moved to {_MOVED[name]}; the old name will be removed.",
            DeprecationWarning,
            stacklevel=2,
        )
        return _resolve(_MOVED[name])
    if not name.startswith("__"):
        try:
            return _importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF) | set(_SUBPACKAGES))
