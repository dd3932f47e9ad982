from layerlens.methods.adapter import BottleneckAdapter, adapter_params, attach_adapter
from layerlens.methods.prefix import attach_prefix, prefix_params

__all__ = ["BottleneckAdapter", "adapter_params", "attach_adapter", "attach_prefix", "prefix_params"]
