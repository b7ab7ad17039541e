"""The decoder (Llama and Phi-1 blocks) used for the Phi-1 and Cosmo-1B reproductions (see modeling/README.md)."""

from modeling.config import PRESETS, ModelConfig
from modeling.model import Transformer

__all__ = ["PRESETS", "ModelConfig", "Transformer"]
