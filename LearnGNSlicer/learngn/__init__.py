"""LearnGN: learned, differentiable Gauss-Newton registration of 3D medical images (MIDL 2022).

The engine has no Slicer dependency; the command line, the Slicer module and training call it.
"""
__version__ = "0.1.0"

from .errors import InputError, RegistrationCancelled  # noqa: E402
from .progress import ProgressEvent  # noqa: E402
from .settings import RegistrationSettings, list_presets  # noqa: E402
from .register import RegistrationResult, register  # noqa: E402

__all__ = ["register", "RegistrationResult", "RegistrationSettings", "ProgressEvent", "InputError",
           "RegistrationCancelled", "list_presets", "__version__"]
