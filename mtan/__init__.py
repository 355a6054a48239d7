"""mtan: the Multi-Task Attention Network for segmentation, depth and surface normals."""
from mtan.model import MTAN, ModelConfigError, count_parameters
from mtan.tasks import preset_tasks

__all__ = ["MTAN", "ModelConfigError", "count_parameters", "preset_tasks"]
__version__ = "0.1.0"
