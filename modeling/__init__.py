"""The decoder (Llama and Phi-1 blocks) used for the Phi-1 and Cosmo-1B reproductions (see modeling/README.md)."""

from modeling.config import PRESETS, ModelConfig

__all__ = ["PRESETS", "ModelConfig", "Transformer"]


def __getattr__(name: str):
    # Lazy: recipe validation needs only the config, and importing the model pulls in torch (~5 s of every
    # `python -m data_pipeline ...` start before this).
    if name == "Transformer":
        from modeling.model import Transformer

        return Transformer
    raise AttributeError(f"module 'modeling' has no attribute {name!r}")
