"""LayerLens: budgeted, per-layer parameter-efficient fine-tuning."""

__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name: str):
    # `layerlens.load` imports torch and transformers when first used, not when layerlens is imported.
    if name == "load":
        from layerlens.loading import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
