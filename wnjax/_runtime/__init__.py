"""Runtime support: errors, input validation, interruption, the compilation cache, tree helpers."""


def __getattr__(name: str):
    """Import a submodule on first attribute access (``wnjax._analysis.equivalence``)."""
    import importlib

    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from err
