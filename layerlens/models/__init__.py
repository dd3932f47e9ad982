"""Backbones (torch) and the model-family table (no torch). The backbones are imported when first named, so the
family table stays importable without torch (the method registry and the planner read it)."""

BACKBONES = (
    "GgufPackageBackbone",
    "HubBackbone",
    "InstalledPackageBackbone",
    "RandomBertBackbone",
    "RandomDecoderBackbone",
)
__all__ = list(BACKBONES)


def __getattr__(name: str):
    if name in BACKBONES:
        from layerlens.models import backbones

        return getattr(backbones, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
