"""Runtime support: errors, input validation, interruption, the compilation cache, tree helpers."""
