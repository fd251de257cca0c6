"""MINT fine-tuning: config, WebDataset input, multi-crop, DINO, losses, the trainer and its run
(checkpoints, metrics), export."""
