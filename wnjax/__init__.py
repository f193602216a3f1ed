"""wnjax: implicit bias of gradient flow and descent on weight-normalized homogeneous nets.

Data flow: model (``MLP``, ``CNN``, any bias-free equinox net) -> parameterization (``ewn``,
``swn``, ``standard``) -> loss (``Exponential``, ...) -> dynamics (``gradient_flow``,
``gradient_descent``) -> diagnostics -> experiments and sweeps.

``import wnjax`` imports JAX and turns on its persistent compilation cache (``wnjax._cache``);
every name below is imported from its module on first use (``wnjax.MLP``,
``from wnjax import MLP``), so equinox, diffrax, optax and scipy load only when needed.
"""

import importlib as _importlib

from . import _cache

_cache.enable()

# Every public name, by the module that defines it.
_EXPORTS: dict[str, tuple[str, ...]] = {
    # --- errors ---
    "._errors": ("InvalidInput", "WnjaxError"),
    # --- models ---
    "._models": ("CNN", "MLP", "Identity", "ReLUPower", "homogeneity_degree", "relu_power"),
    "._neurons": ("neuron_norms", "weight_layers"),
    # --- parameterizations ---
    "._parameterize": (
        "EWN", "SWN", "Frozen", "LayerWeight", "Parameterized", "Standard", "ewn", "parameterize",
        "standard", "swn", "to_standard",
    ),
    # --- losses ---
    "._losses": (
        "CrossEntropy", "Exponential", "Logistic", "Loss", "Square", "get_loss", "log_loss",
        "log_softplus", "margins",
    ),
    # --- dynamics ---
    "._descent": ("GDFailed", "GDResult", "gradient_descent"),
    "._flow": (
        "FlowFailed", "FlowResult", "default_solver", "gradient_flow", "summaries", "loss_levels",
    ),
    "._save": ("AtLossLevels", "AtTimes", "LogSpaced"),
    "._solver.auto": ("AutoSwitch",),
    "._solver.stiff": ("stiff_solver",),
    "._transforms": ("neuron_rate_sgd", "scale_by_neuron_norm_sq"),
    # --- equivalence ---
    "._equivalence": ("equivalence_check", "flow_equivalence", "gd_equivalence"),
    # --- asymptotics: schedules and diagnostics ---
    "._diagnostics": (
        "alignment", "asymptotic_summaries", "count_neurons_above", "approximate_kkt_residual",
        "log_neuron_gradient_norms", "loss_direction", "loss_rate_exponents", "normalized_margin",
        "relation_residuals", "relative_neuron_norms",
    ),
    "._schedules": ("loss_normalized_sgd",),
    # --- data and experiments ---
    "._data": (
        "conv_rate_data", "digits", "lin_sep", "load_mnist", "mnist", "read_idx",
        "train_test_split", "xor",
    ),
    "._experiments.simple_traj": ("CoordinateLinear",),
    "._reproduce": ("experiment_options", "reproduce", "show_run"),
    # --- diagonal nets ---
    "._diagonal": (
        "DiagonalNet", "coordinate_wn", "diagonal_net", "diagonal_signal", "effective_alpha",
        "invariant_spread", "polar_wn", "regroup", "relative_error", "sparse_problem",
        "uv_products", "uv_ratio",
    ),
    "._polar": ("PolarRates", "polar_rates", "polar_sgd"),
    "._sparse": ("l1_interpolator", "min_l2_interpolator", "q_alpha", "q_alpha_interpolator"),
    # --- linear tensor networks ---
    "._tensor": (
        "ConvolutionTensor", "DataTensor", "DenseTensor", "DiagonalTensor", "FullyConnectedTensor",
        "OdecoTensor", "TensorNetwork", "circular_convolution", "convolutional_tensor_net",
        "diagonal_tensor_net", "diagonal_regression_init", "fourier_features",
        "fourier_regression_init", "fourier_rho", "fully_connected_tensor_net",
        "fully_connected_regression_init", "linear_predictor", "odeco_tensor_net",
        "odeco_to_diagonal", "tensor_network", "transformed_rho",
    ),
    "._tensor_predict": (
        "group_max_margin", "tensor_kkt_residual", "l1_max_margin", "regression_link",
        "tensor_margin", "min_norm_interpolant", "regression_limit",
    ),
    # --- small initialization ---
    "._ncf": (
        "KKTPoint", "SecondOrder", "kkt_residual", "ncf_kkt_point", "ncf_second_order",
        "neural_correlation", "trainable_degree",
    ),
    "._small_init": (
        "Plateau", "ReducedNetwork", "SmallInitDiagnostics", "SupportMask", "crossing_time",
        "direction_cosines", "escape_time", "find_plateaus", "flow_escape_time",
        "fit_escape_scaling", "log_save_times", "reduced_network", "relu2_teacher_data",
        "scale_to_norm", "small_init_diagnostics", "unit_norms",
    ),
    # --- sweeps ---
    "._batched": ("traced_gradient_descent",),
    "._store": ("Store", "StoreMismatch"),
    "._sweep": ("SweepResult", "plot_bands", "split_grid", "sweep"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)
__version__ = "0.1.0"


def __getattr__(name: str):
    """Import a public name from its module on first use (PEP 562); later uses find it here.
    A submodule (``wnjax._neurons``, ``wnjax.problems``) is imported on first use too."""
    module = _MODULE_OF.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:
            return _importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))
