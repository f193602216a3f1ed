"""JAX's persistent compilation cache for XLA:CPU programs that call back into Python.

JAX never writes such a program, and every ``wnjax.gradient_flow`` solve is one (its check for
SIGINT/SIGTERM is a ``pure_callback``). An XLA:CPU callback is an FFI call that names its Python
function by its index in the program's callback list; that list comes from tracing, which a
cache hit still does, so a program loaded from the cache can be handed the callbacks of its own
trace. ``install`` makes JAX do that; ``wnjax._runtime.cache.enable`` calls it whenever the
persistent cache is on.
"""

KEY_SUFFIX = "-with-python-callbacks"


def install():
    """Let JAX's persistent cache keep XLA:CPU programs that call back into Python.

    JAX skips them when writing (``compiler._cache_write``) and loads entries without callbacks
    (``compilation_cache.get_executable_and_time``). Here the callbacks of the program being
    compiled are kept aside while ``compiler.compile_or_get_cached`` runs: a CPU program is
    written without them and loaded with them (``deserialize_executable(host_callbacks=...)``).
    Such an entry is stored under its key plus ``KEY_SUFFIX``: JAX on its own would load it
    without its callbacks (and crash calling one), so it must never find it. Nothing changes
    where JAX's internals differ from what this expects. Installing twice changes nothing.

    **Returns:** whether the cache now keeps such programs.
    """
    import inspect
    import threading

    from jax._src import compilation_cache, compiler

    if getattr(compiler, "_keeps_callback_programs", False):
        return True
    expected = {
        compiler.compile_or_get_cached: [
            "backend",
            "computation",
            "devices",
            "compile_options",
            "host_callbacks",
        ],
        compiler._cache_write: [
            "cache_key",
            "compile_time_secs",
            "module_name",
            "backend",
            "executable",
            "host_callbacks",
        ],
        compilation_cache.get_executable_and_time: [
            "cache_key",
            "compile_options",
            "backend",
            "executable_devices",
        ],
    }
    for fn, names in expected.items():
        if list(inspect.signature(fn).parameters)[: len(names)] != names:
            return False
    if not all(
        hasattr(compilation_cache, name)
        for name in ("_get_cache", "decompress_executable", "extract_executable_and_time")
    ):
        return False
    pending = threading.local()
    compile_or_get_cached = compiler.compile_or_get_cached
    cache_write = compiler._cache_write
    get_executable_and_time = compilation_cache.get_executable_and_time

    def compile_with_callbacks(
        backend, computation, devices, compile_options, host_callbacks, *args, **kwargs
    ):
        cpu = backend.platform == "cpu" and all(callable(c) for c in host_callbacks)
        outer = getattr(pending, "callbacks", None)
        pending.callbacks = list(host_callbacks) if cpu and host_callbacks else None
        try:
            return compile_or_get_cached(
                backend, computation, devices, compile_options, host_callbacks, *args, **kwargs
            )
        finally:
            pending.callbacks = outer

    def write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks):
        if getattr(pending, "callbacks", None) is not None:
            cache_key, host_callbacks = cache_key + KEY_SUFFIX, ()
        cache_write(cache_key, compile_time_secs, module_name, backend, executable, host_callbacks)

    def read(cache_key, compile_options, backend, executable_devices):
        callbacks = getattr(pending, "callbacks", None)
        if callbacks is None:
            return get_executable_and_time(cache_key, compile_options, backend, executable_devices)
        cache = compilation_cache._get_cache(backend)
        entry = None if cache is None else cache.get(cache_key + KEY_SUFFIX)
        if entry is None:
            return None, None
        serialized, compile_time = compilation_cache.extract_executable_and_time(
            compilation_cache.decompress_executable(entry)
        )
        executable = backend.deserialize_executable(
            serialized, executable_devices, compile_options, host_callbacks=callbacks
        )
        return executable, compile_time

    compiler.compile_or_get_cached = compile_with_callbacks
    compiler._cache_write = write
    compilation_cache.get_executable_and_time = read
    compiler._keeps_callback_programs = True
    return True
