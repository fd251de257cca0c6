"""Backbones (registry), the ST-token ViT wrapper, expression heads and the Encoder API."""
