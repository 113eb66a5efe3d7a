"""Process-wide switches read by the ops layer."""
import os

# Tests set PYCONV_DEBUG_FILL=1: outputs start as NaN and native workspaces as 0xA5 garbage, so an
# element a kernel forgets to write cannot pass by accident.
DEBUG_FILL = os.environ.get("PYCONV_DEBUG_FILL", "0") not in ("", "0")
