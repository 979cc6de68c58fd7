"""Per-architecture adapters: which layers are sensitive, how pipelines are called.

Nothing outside this package knows architecture names.
"""

from quantomni.models.base import ArchitectureAdapter
from quantomni.models.registry import adapter_for_class, get_adapter, registered_adapters

__all__ = ["ArchitectureAdapter", "adapter_for_class", "get_adapter", "registered_adapters"]
