class PyConvError(ValueError, RuntimeError):
    """Invalid argument to a pyconv op. Both a ValueError and a RuntimeError, so code written
    against torch's exceptions still catches it. Messages name the argument, the value and what
    was expected."""
