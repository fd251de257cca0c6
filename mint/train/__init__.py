"""MINT fine-tuning: config, WebDataset input, multi-crop, DINO, losses, trainer, export."""
