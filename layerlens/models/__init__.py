from layerlens.models.backbones import HubBackbone, InstalledPackageBackbone, RandomBertBackbone

__all__ = ["HubBackbone", "InstalledPackageBackbone", "RandomBertBackbone"]
