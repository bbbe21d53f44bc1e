"""Export sparse checkpoints (dense or compressed safetensors) and load them back."""

from .load import load_sparse, verify_export
from .save import FORMATS, ExportReport, export

__all__ = ["FORMATS", "ExportReport", "export", "load_sparse", "verify_export"]
