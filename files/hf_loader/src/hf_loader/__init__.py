"""Offline-first loading of Hugging Face image datasets (ImageNet-1k) for training hosts."""

from .env import force_offline

__version__ = "0.1.0"
__all__ = ["force_offline", "__version__"]
