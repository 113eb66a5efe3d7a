"""torch.library custom ops (torch.ops.pyconv.*), one module per op family. Importing this package
registers them all. pyconv.functional and the autograd formulas reach them through common.call, which
skips the dispatcher (and calls the same implementation) where no autograd, tracing, mode or
transform is involved."""
from . import conv  # noqa: F401
from . import pool  # noqa: F401
from . import batch_norm  # noqa: F401
from . import conv_bn_relu  # noqa: F401
