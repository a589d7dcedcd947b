"""The binding research of the bundled shapes model: training terms and
attention recording that are not part of GLIDE. Importing it (configs do it
through ``custom_imports=['projects.glide.research']``) registers them."""
from . import attention, losses, transforms  # noqa: F401
