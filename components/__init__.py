"""One ComponentResource per module; each owns the resources its docstring names."""
